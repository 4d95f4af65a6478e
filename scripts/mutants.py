#!/usr/bin/env python3
"""Mutation testing of the guarantee-bearing code (`make mutants`).

Each mutation of tests/mutants/mutations.toml is a deliberate bug: an exact
snippet of a file of `src/` or `lua/` and its replacement, the guarantee it
breaks and the tests that should catch it. For each mutation this script
copies the work tree (tracked and untracked, not ignored files) into one
scratch tree, applies the edit, runs only the tests named for it and records
whether one of them failed (caught) or all passed (survived). The scratch
tree is the same for every mutation and builds into its own target
directory, so that each mutation recompiles only this crate.

A snippet that no longer occurs exactly once in its file is a stale
mutation: the run fails before anything is built, so the list is kept
current with the code.

    scripts/mutants.sh                 # every mutation
    scripts/mutants.sh --list          # list them
    scripts/mutants.sh --check         # only check that every snippet applies
    scripts/mutants.sh --check-ref main  # the same against another revision
    scripts/mutants.sh hash- ttl-      # the mutations named (ids or id prefixes)
    scripts/mutants.sh --file lua/     # the mutations of the functions library
    scripts/mutants.sh --all-tests M03 # run every named test, not only up to the first catch
    scripts/mutants.sh --baseline M03  # run the named tests on the unmutated tree first
    scripts/mutants.sh --summary       # the latest verdict of each mutation, as a table

Environment: CARGO_TARGET_DIR (the scratch target is $CARGO_TARGET_DIR/mutants,
seeded from $CARGO_TARGET_DIR/release when absent), MS_MUTANTS_DIR (the
scratch tree; default $CARGO_TARGET_DIR/mutants/tree), MS_MUTANTS_REPORT
(default $CARGO_TARGET_DIR/mutants/report.md), MS_MUTANTS_TEST_TIMEOUT
(seconds per test command, default 900).

Test names in the list:
    core::name             cargo test --release --test core -- --exact name
    lib::backoff::tests::x cargo test --release --lib -- --exact backoff::tests::x
    c                      tests/c/run.sh (AddressSanitizer run; no valgrind)
    py::tests/test_x.py::t pytest in bindings/python (needs .run/test-venv)
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests" / "mutants" / "mutations.toml"


def die(msg):
    print(f"mutants: {msg}", file=sys.stderr)
    sys.exit(2)


def load_list():
    with open(LIST, "rb") as f:
        data = tomllib.load(f)
    muts = data.get("mutation", [])
    seen = set()
    for m in muts:
        for field in ("id", "guarantee", "tests"):
            if field not in m:
                die(f"mutation {m.get('id', '?')}: no '{field}'")
        if m["id"] in seen:
            die(f"mutation id {m['id']} twice")
        seen.add(m["id"])
        if "edits" not in m:
            m["edits"] = [{k: m[k] for k in ("file", "original", "replacement")}]
    return muts


def variants(e):
    """The (original, replacement) pairs of an edit: `original` and
    `replacement` may be lists of the same length, variants for versions
    of the code (the first that occurs exactly once is applied)."""
    o, r = e["original"], e["replacement"]
    if isinstance(o, str):
        return [(o, r)]
    if isinstance(r, str):
        r = [r] * len(o)
    if len(o) != len(r):
        die(f"{e['file']}: {len(o)} originals but {len(r)} replacements")
    return list(zip(o, r))


def pick(e, text):
    """The variant of edit e that occurs exactly once in text, or None."""
    for o, r in variants(e):
        if text.count(o) == 1:
            return o, r
    return None


def read_file(tree, rel, ref=None):
    """A file of the work tree (or of git revision `ref`); None if absent."""
    if ref:
        r = subprocess.run(["git", "show", f"{ref}:{rel}"], cwd=ROOT, capture_output=True)
        return r.stdout.decode("utf-8") if r.returncode == 0 else None
    path = tree / rel
    return path.read_text(encoding="utf-8") if path.is_file() else None


def edits_apply(m, tree, ref=None):
    """Returns the problems of applying mutation m to `tree` (empty: fine)."""
    problems = []
    for e in m["edits"]:
        text = read_file(tree, e["file"], ref)
        if text is None:
            problems.append(f"{e['file']}: no such file")
            continue
        if not pick(e, text):
            counts = [text.count(o) for o, _ in variants(e)]
            problems.append(
                f"{e['file']}: the original snippet occurs {counts} times (expected once): "
                + repr(variants(e)[0][0][:80])
            )
    return problems


def tree_files():
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p]


def sync_tree(scratch, source=None, files=None):
    """Makes `scratch` a copy of the work tree (or of `source`, a copy made
    by this function, with the same `files`). A file is rewritten only when
    its content differs (and gets the current time, so cargo sees it)."""
    source = source or ROOT
    files = files or tree_files()
    # Files gone from the tree go from the copy too (cargo would still
    # build a test file left behind).
    keep = set(files)
    for path in list(scratch.rglob("*")):
        if path.is_file() and str(path.relative_to(scratch)) not in keep:
            path.unlink()
    for rel in files:
        src = source / rel
        if not src.is_file() or src.is_symlink():
            continue
        dst = scratch / rel
        data = src.read_bytes()
        if dst.is_file() and dst.read_bytes() == data:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()
        dst.write_bytes(data)
        shutil.copymode(src, dst)


def apply(m, scratch):
    for e in m["edits"]:
        path = scratch / e["file"]
        text = path.read_text(encoding="utf-8")
        o, r = pick(e, text)
        path.write_text(text.replace(o, r, 1), encoding="utf-8")


def command(test, scratch):
    """(argv, cwd, label) of one test name of the list."""
    if test == "c":
        return ["tests/c/run.sh"], scratch, "tests/c/run.sh"
    if test.startswith("py::"):
        venv = ROOT / ".run" / "test-venv" / "bin" / "python"
        return ([str(venv), "-m", "pytest", "-q", "-x", test[4:]],
                scratch / "bindings" / "python", f"pytest {test[4:]}")
    if test.startswith("lib::"):
        name = test[5:]
        return (["cargo", "test", "--release", "--lib", "--", "--exact", name],
                scratch, f"lib {name}")
    suite, _, name = test.partition("::")
    if not name:
        die(f"test '{test}': write <suite>::<name>, lib::<path>, c or py::<path>")
    return (["cargo", "test", "--release", "--test", suite, "--", "--exact", name],
            scratch, test)


def build(test, scratch, env, log):
    """Builds what `test` needs; returns True when it compiled."""
    if test.startswith("py::") or test == "c":
        argv = ["cargo", "build", "--release"]
    elif test.startswith("lib::"):
        argv = ["cargo", "test", "--release", "--lib", "--no-run"]
    else:
        argv = ["cargo", "test", "--release", "--test", test.partition("::")[0], "--no-run"]
    return run(argv, scratch, env, log, 3600)[0] == 0


def run(argv, cwd, env, log, timeout):
    """Runs argv in its own process group; (exit code or None on timeout, seconds)."""
    start = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}   (in {cwd})\n".encode())
        out.flush()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = None
    return rc, time.monotonic() - start


def run_tests(m, scratch, env, log, all_tests, timeout):
    """Runs m's tests; returns (verdict, [(test, outcome, seconds)])."""
    results = []
    for test in m["tests"]:
        if not build(test, scratch, env, log):
            results.append((test, "does not compile", 0.0))
            return "build-failed", results
        argv, cwd, _ = command(test, scratch)
        rc, secs = run(argv, cwd, env, log, timeout)
        outcome = "passed" if rc == 0 else ("timed out" if rc is None else "FAILED")
        results.append((test, outcome, secs))
        if rc != 0 and not all_tests:
            break
    if any(o in ("FAILED", "timed out") for _, o, _ in results):
        return "caught", results
    return "survived", results


def mutants_target():
    target = Path(os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target, target / "mutants"


def summary(muts):
    """The latest verdict of each mutation recorded in results.jsonl."""
    latest = {}
    path = mutants_target()[1] / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            latest[r["id"]] = r
    print("| mutation | file | guarantee broken | verdict | caught by |")
    print("|---|---|---|---|---|")
    for m in muts:
        r = latest.get(m["id"])
        files = ", ".join(sorted({f"`{e['file']}`" for e in m["edits"]}))
        if not r:
            verdict, by = "not run", ""
        else:
            verdict = r["verdict"]
            by = ", ".join(f"`{t}`" for t in r["caught_by"])
            if verdict == "survived" and m.get("equivalent"):
                verdict = "survived: equivalent (below)"
            elif verdict == "survived":
                verdict = "survived: a test is owed (below)"
        print(f"| `{m['id']}` | {files} | {m['guarantee']} | {verdict} | {by} |")
    equivalent = [m for m in muts if m.get("equivalent")]
    if equivalent:
        print("\nSurvivors, and why no test catches them (equivalent, or not forceable):\n")
        for m in equivalent:
            print(f"- `{m['id']}`: {m['equivalent']}.")
    owed = [m for m in muts if latest.get(m["id"], {}).get("verdict") == "survived"
            and not m.get("equivalent")]
    if owed:
        print("\nSurvivors a test is owed for:\n")
        for m in owed:
            print(f"- `{m['id']}`: {m.get('owed', 'no reason recorded')}.")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", help="mutation ids (or id prefixes) to run; default all")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--check", action="store_true", help="check that every snippet applies, then exit")
    ap.add_argument("--check-ref", metavar="REV",
                    help="check that every snippet applies to git revision REV (e.g. main), then exit")
    ap.add_argument("--all-tests", action="store_true", help="run every test named, not only up to the first catch")
    ap.add_argument("--summary", action="store_true",
                    help="print the latest recorded verdict of every mutation (from results.jsonl) as a table")
    ap.add_argument("--file", help="only mutations of files whose path contains this (e.g. lua/)")
    ap.add_argument("--baseline", action="store_true", help="run the tests on the unmutated tree first")
    args = ap.parse_args()

    muts = load_list()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if args.list:
        for m in muts:
            if args.file and not any(args.file in e["file"] for e in m["edits"]):
                continue
            files = ", ".join(sorted({e["file"] for e in m["edits"]}))
            print(f"{m['id']:5} {files:28} {m['guarantee']}")
            print(f"{'':5} tests: {', '.join(m['tests'])}")
        return 0

    if args.summary:
        return summary(muts)

    stale = [(m["id"], p) for m in muts for p in edits_apply(m, ROOT, args.check_ref)]
    if stale:
        for mid, p in stale:
            print(f"mutants: STALE mutation {mid}: {p}", file=sys.stderr)
        print("mutants: update tests/mutants/mutations.toml to the code", file=sys.stderr)
        return 1
    if args.check or args.check_ref:
        print(f"mutants: all {len(muts)} mutations apply" + (f" to {args.check_ref}" if args.check_ref else ""))
        return 0

    if args.ids:
        chosen = [m for m in muts if any(m["id"] == i or m["id"].startswith(i) for i in args.ids)]
        if not chosen:
            die(f"no mutation matches {args.ids}")
    else:
        chosen = muts
    if args.file:
        chosen = [m for m in chosen if any(args.file in e["file"] for e in m["edits"])]
    # Mutations of other files than Rust sources first: they share one build.
    chosen.sort(key=lambda m: any(e["file"].endswith(".rs") for e in m["edits"]))

    target, mtarget = mutants_target()
    if not (mtarget / "release").exists() and (target / "release").exists():
        mtarget.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(target / "release"), str(mtarget / "release")], check=True)
    scratch = Path(os.environ.get("MS_MUTANTS_DIR") or (mtarget / "tree"))
    scratch.mkdir(parents=True, exist_ok=True)
    report = Path(os.environ.get("MS_MUTANTS_REPORT") or (mtarget / "report.md"))
    timeout = int(os.environ.get("MS_MUTANTS_TEST_TIMEOUT", "900"))
    env = dict(os.environ, CARGO_TARGET_DIR=str(mtarget), MS_SKIP_VALGRIND="1")
    env.pop("MISSIONSTREAM_DEBUG", None)
    logs = mtarget / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    # The tree as it is now: edits made while the run goes on do not mix in.
    pristine = mtarget / "pristine"
    files = tree_files()
    sync_tree(pristine, ROOT, files)
    rows = []
    if args.baseline:
        sync_tree(scratch, pristine, files)
        tests = []
        for m in chosen:
            tests += [t for t in m["tests"] if t not in tests]
        for t in tests:
            verdict, res = run_tests({"tests": [t]}, scratch, env, logs / "baseline.log", True, timeout)
            print(f"baseline {t}: {res[0][1]}", flush=True)
            if verdict != "survived":
                print(f"mutants: {t} does not pass on the unmutated tree (log {logs / 'baseline.log'})",
                      file=sys.stderr)
                return 1

    started = datetime.datetime.now(datetime.timezone.utc)
    for i, m in enumerate(chosen, 1):
        sync_tree(scratch, pristine, files)
        apply(m, scratch)
        log = logs / f"{m['id']}.log"
        log.unlink(missing_ok=True)
        print(f"[{i}/{len(chosen)}] {m['id']}: {m['guarantee']}", flush=True)
        t0 = time.monotonic()
        verdict, res = run_tests(m, scratch, env, log, args.all_tests or m.get("all_tests", False),
                                 m.get("timeout", timeout))
        secs = time.monotonic() - t0
        caught_by = [t for t, o, _ in res if o in ("FAILED", "timed out")]
        detail = "; ".join(f"{t}: {o} ({s:.0f} s)" for t, o, s in res)
        print(f"    {verdict.upper()} in {secs:.0f} s  {detail}", flush=True)
        rows.append({"id": m["id"], "guarantee": m["guarantee"], "verdict": verdict,
                     "caught_by": caught_by, "results": res,
                     "equivalent": m.get("equivalent", "")})
        with open(mtarget / "results.jsonl", "a") as f:
            f.write(json.dumps({"at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), **rows[-1]}) + "\n")
    sync_tree(scratch, pristine, files)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    lines = [f"# Mutation run {started:%Y-%m-%d %H:%M} UTC, commit {commit}{' (modified)' if dirty else ''}",
             "", "| mutation | guarantee broken | verdict | caught by |", "|---|---|---|---|"]
    for r in rows:
        by = ", ".join(f"`{t}`" for t in r["caught_by"]) or "—"
        note = f" ({r['equivalent']})" if r["verdict"] == "survived" and r["equivalent"] else ""
        lines.append(f"| {r['id']} | {r['guarantee']} | {r['verdict']}{note} | {by} |")
    caught = sum(r["verdict"] == "caught" for r in rows)
    survived = [r["id"] for r in rows if r["verdict"] == "survived"]
    broken = [r["id"] for r in rows if r["verdict"] == "build-failed"]
    lines += ["", f"{caught} of {len(rows)} caught; survived: {', '.join(survived) or 'none'}"
              + (f"; do not compile: {', '.join(broken)}" if broken else "")]
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))
    print(f"mutants: report {report}, logs {logs}")
    # A survivor not recorded as equivalent means a test is owed.
    owed = [r["id"] for r in rows if r["verdict"] == "survived" and not r["equivalent"]]
    return 1 if owed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
