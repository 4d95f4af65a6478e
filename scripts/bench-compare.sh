#!/usr/bin/env bash
# Before/after benchmark: the benchmark of a baseline revision beside the
# current tree's, run interleaved (A B A B ..., several rounds, the same
# rows), each figure printed beside its baseline with the ratio of the
# medians. On a loaded or noisy machine only the ratios mean something,
# and interleaving is what keeps them honest: both sides see the same
# load, round after round.
#
#   scripts/bench-compare.sh [--rounds N] [--rows 2,3,4] [--full] <baseline rev>
#   scripts/bench-compare.sh --report <baseline rev>
#                          (the comparison again from the last runs' files)
#   make bench-compare [BASE=<rev>] [ROUNDS=N] [ROWS=2,3,4]
#
# The baseline is checked out in a temporary git worktree under
# target/bench-compare/ (removed at the end) and its benchmark built there
# (its own target directory, kept, seeded from this tree's target/release
# on first use). Each
# benchmark starts its own redis-server and webdis on free loopback ports
# and loads the functions library of the tree it was built from (the
# test fixture's ROOT is that tree, compiled in): a baseline of another
# protocol version runs against its own lua/, never against this tree's.
# The script checks that before running anything.
#
# Output: every run in target/bench-compare/runs/<UTC time>/run-<round>-<side>.txt
# (target/bench-compare/last links to the latest), the comparison beside
# them (compare.md) and in target/bench/compare.md (also printed).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${MS_BENCH_ROUNDS:-5}
rows=2,3,4
mode=--quick
rev=
report_only=
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --rows) rows=$2; shift 2 ;;
    --full) mode=; shift ;;
    --report) report_only=1; shift ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "bench-compare: unknown option $1" >&2; exit 2 ;;
    *) rev=$1; shift ;;
    esac
done
if [ -z "$rev" ]; then
    echo "usage: scripts/bench-compare.sh [--rounds N] [--rows 2,3,4] [--full] <baseline rev>" >&2
    exit 2
fi
case "$rounds" in '' | *[!0-9]* | 0) echo "bench-compare: --rounds takes a positive integer" >&2; exit 2 ;; esac
case "$rows" in '' | *[!0-9,]*) echo "bench-compare: --rows takes numbers separated by commas" >&2; exit 2 ;; esac

full=$(git rev-parse --verify --quiet "$rev^{commit}") || {
    echo "bench-compare: no such revision: $rev" >&2
    exit 2
}
short=$(git rev-parse --short "$full")
current=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- src examples tests lua Cargo.toml Cargo.lock 2>/dev/null; then
    current="$current+changes"
fi

out="$root/target/bench-compare"
mkdir -p "$out" "$root/target/bench"
tree="$out/tree-$short"

if [ -n "$report_only" ]; then
    runs=$(readlink -f "$out/last" 2>/dev/null || true)
    [ -n "$runs" ] && [ -f "$runs/run-1-base.txt" ] || { echo "bench-compare: no runs in $out/last" >&2; exit 1; }
    base_protocol=$(git show "$full:lua/missionstream.lua" | sed -n "s/^local PROTOCOL = '\\([0-9]*\\)'.*/\\1/p")
    current_protocol=$(sed -n "s/^local PROTOCOL = '\\([0-9]*\\)'.*/\\1/p" lua/missionstream.lua)
    started=$(date -u -r "$runs/run-1-base.txt" '+%Y-%m-%d %H:%M UTC')
    rounds=$(find "$runs" -name 'run-*-base.txt' | wc -l)
    rows=$(cat "$runs/rows" 2>/dev/null || echo "$rows")
    mode=$(cat "$runs/mode" 2>/dev/null || echo "$mode")
    current=$(cat "$runs/current-rev" 2>/dev/null || echo "$current")
    load_before=$(cat "$runs/load-before" 2>/dev/null || echo "?")
    load_after=$(cat "$runs/load-after" 2>/dev/null || echo "?")
else
    # The baseline's worktree: a detached checkout for this run, removed
    # when the script ends (its built benchmark reads lua/ and deploy/
    # from it, so it lives as long as the runs).
    git worktree prune
    if [ ! -d "$tree" ]; then
        echo "bench-compare: checking out $short in $tree"
        git worktree add --detach --quiet "$tree" "$full"
    fi
    trap 'git -C "$root" worktree remove --force "$tree" 2>/dev/null || true' EXIT

    # Its own target directory, seeded with this tree's compiled dependencies
    # (the same Cargo.lock builds none of them again).
    base_target="$out/target"
    own_target=${CARGO_TARGET_DIR:-$root/target}
    if [ ! -d "$base_target/release" ] && [ -d "$own_target/release" ]; then
        echo "bench-compare: seeding $base_target from $own_target/release"
        mkdir -p "$base_target"
        cp -a "$own_target/release" "$base_target/"
    fi
    echo "bench-compare: building the baseline's benchmark ($short)"
    (cd "$tree" && CARGO_TARGET_DIR="$base_target" cargo build --release --quiet --example bench)
    cp "$base_target/release/examples/bench" "$out/bench-$short"
    echo "bench-compare: building the current benchmark ($current)"
    cargo build --release --quiet --example bench
    cp "$own_target/release/examples/bench" "$out/bench-current"

    # Each side loads its own functions library: its binary names its own tree.
    protocol_of() { sed -n "s/^local PROTOCOL = '\([0-9]*\)'.*/\1/p" "$1/lua/missionstream.lua"; }
    base_protocol=$(protocol_of "$tree")
    current_protocol=$(protocol_of "$root")
    for side in "$short:$tree" "current:$root"; do
        bin="$out/bench-${side%%:*}"
        if ! grep -aqF "${side#*:}" "$bin"; then
            echo "bench-compare: $bin does not name ${side#*:}: it would not load that tree's lua/" >&2
            exit 1
        fi
    done
    echo "bench-compare: protocol $base_protocol (baseline, its own lua/) against $current_protocol (current)"

    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    runs="$out/runs/$(date -u +%Y%m%dT%H%M%S)"
    mkdir -p "$runs"
    ln -sfn "$runs" "$out/last"
    echo "$load_before" >"$runs/load-before"
    echo "$current" >"$runs/current-rev"
    echo "$rows" >"$runs/rows"
    echo "$mode" >"$runs/mode"
    started=$(date -u '+%Y-%m-%d %H:%M UTC')
    for ((i = 1; i <= rounds; i++)); do
        for side in base current; do
            if [ "$side" = base ]; then
                bin="$out/bench-$short"
                dir=$tree
            else
                bin="$out/bench-current"
                dir=$root
            fi
            log="$runs/run-$i-$side.txt"
            echo "bench-compare: round $i/$rounds, $side"
            # shellcheck disable=SC2086 # $mode is empty or one word
            if ! (cd "$dir" && "$bin" $mode --rows "$rows") >"$log" 2>&1; then
                echo "bench-compare: the $side benchmark failed in round $i; its output: $log" >&2
                tail -20 "$log" >&2
                exit 1
            fi
        done
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "$load_after" >"$runs/load-after"

fi

python3 - "$runs" "$rounds" "$short" "$current" "$rows" "${mode:-full}" "$started" \
    "$load_before" "$load_after" "$base_protocol" "$current_protocol" "$(nproc)" \
    >"$root/target/bench/compare.md" <<'EOF'
import re, statistics, sys

(out, rounds, base, current, rows, mode, started, load_before, load_after,
 base_protocol, current_protocol, nproc) = sys.argv[1:]
rounds = int(rounds)
UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
NUMBER = re.compile(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(/s|ns|µs|us|ms|s\b|KiB|MiB|B\b|%)?")


def number(text):
    """The first figure of a cell, times in µs; None if there is none."""
    m = NUMBER.search(text)
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    return value * UNITS.get(m.group(2) or "", 1.0), (m.group(2) or "")


def figures(path):
    """figure -> (value, unit, ratio to the run's own raw baseline)."""
    found, last = {}, ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.lstrip().startswith("=> "):
                continue
            cells = line.lstrip()[3:].split(" | ")
            head = cells[0]
            if ": " not in head:
                continue
            name, value = head.rsplit(": ", 1)
            name = name.strip()
            if not re.match(r"[0-9]+[a-z]?\. ", name):
                name = f"{last} {name}"
            else:
                last = name.split(" ")[0]
            ratio = next((c[len("ratio "):] for c in cells if c.startswith("ratio ")), "")
            v = number(value)
            r = number(ratio)
            if v is not None:
                found[name] = (v[0], v[1], r[0] if r else None)
            # "p50 (p99)": the second figure of the value is the p99; its
            # ratio is "(p99 x)" in the ratio cell, or the value's over the
            # raw baseline's second figure.
            if "(p99)" in name and v is not None:
                short = name.replace(" (p99)", "")
                found[short] = found.pop(name)
                v99 = number(value[value.find("(") + 1:]) if "(" in value else None
                base_cell = next((c[len("baseline "):] for c in cells if c.startswith("baseline ")), "")
                b99 = number(base_cell[base_cell.find("(") + 1:]) if "(" in base_cell else None
                r99 = re.search(r"p99 ([0-9.]+)", ratio)
                r99 = float(r99.group(1)) if r99 else (
                    v99[0] / b99[0] if v99 and b99 and b99[0] else None)
                if v99 is not None:
                    p99 = short.replace("p50", "p99").replace("median", "p99")
                    if p99 == short:
                        p99 = short + ", p99"
                    found[p99] = (v99[0], v99[1], r99)
    return found


runs = {side: [figures(f"{out}/run-{i}-{side}.txt") for i in range(1, rounds + 1)]
        for side in ("base", "current")}
names = []
for run in runs["base"] + runs["current"]:
    for n in run:
        if n not in names:
            names.append(n)


def show(v, unit):
    if unit in ("ns", "µs", "us", "ms", "s"):
        return f"{v / 1e3:.2f} ms" if v >= 1e3 else f"{v:.0f} µs"
    return f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}"


print(f"# Before/after: {base} against {current}\n")
print(f"`scripts/bench-compare.sh --rounds {rounds} --rows {rows}"
      f"{'' if mode == 'full' else ' '}{'' if mode == 'full' else '--' + mode.lstrip('-')} {base}`, "
      f"started {started}; {rounds} rounds, interleaved (baseline, current, baseline, ...); "
      f"nproc {nproc}, load average (1, 5, 15 min) {load_before} before, {load_after} after; "
      f"protocol {base_protocol} (baseline, its own lua/) and {current_protocol} (current).\n")
print("Medians over the rounds. \"current / baseline\" divides the medians of the "
      "figures themselves (for a rate, above 1 is better; for a time, below 1 is); "
      "\"ratio to raw\" is each run's own ratio to the raw baseline it measures "
      "beside the library (lower is better for times, higher for rates), "
      "the figure least moved by the machine's load.\n")
print("| figure | baseline | current | current / baseline | ratio to raw: baseline [range] | current [range] | rounds |")
print("|---|---|---|---|---|---|---|")
for n in names:
    b = [r[n] for r in runs["base"] if n in r]
    c = [r[n] for r in runs["current"] if n in r]
    def raw(side):
        rs = [x[2] for x in side if x[2] is not None]
        if not rs:
            return "—"
        return f"{statistics.median(rs):.2f} [{min(rs):.2f}–{max(rs):.2f}]"

    if not b or not c:
        print(f"| {n} | {'—' if not b else show(statistics.median(x[0] for x in b), b[0][1])} | "
              f"{'—' if not c else show(statistics.median(x[0] for x in c), c[0][1])} | — | "
              f"{raw(b)} | {raw(c)} | {len(b)}/{len(c)} |")
        continue
    mb = statistics.median(x[0] for x in b)
    mc = statistics.median(x[0] for x in c)
    ratio = f"{mc / mb:.2f}" if mb else "—"
    print(f"| {n} | {show(mb, b[0][1])} | {show(mc, c[0][1])} | {ratio} | {raw(b)} | {raw(c)} | {len(b)}/{len(c)} |")
print(f"\nEach run's whole output: target/bench-compare/runs/{out.rstrip('/').rsplit('/', 1)[-1]}/run-<round>-<base|current>.txt.")
EOF
cp "$root/target/bench/compare.md" "$runs/compare.md"
cat "$root/target/bench/compare.md"
echo "bench-compare: written to target/bench/compare.md and $runs/compare.md"
