"""The documents' examples, run as written against a real Redis + Webdis:
the C example of README.md (built and run with its documented command
lines), and the quick start and the command-line walk-through of
bindings/python/README.md. Each runs more than once: the documents say
they can."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple


import missionstream as ms
from conftest import PYTHON_DIR, REPO, Server, shell_env

README = REPO / "README.md"
PY_README = PYTHON_DIR / "README.md"


class Block(NamedTuple):
    section: str  # the "## " heading it is under
    lang: str
    code: str


def blocks(path: Path) -> List[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    out: List[Block] = []
    section, lang, lines = "", None, []  # type: ignore[var-annotated]
    for line in path.read_text().splitlines():
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                lang, lines = line[3:].strip(), []
        elif line.startswith("```"):
            out.append(Block(section, lang, "\n".join(lines) + "\n"))
            lang = None
        else:
            lines.append(line)
    assert lang is None, f"{path}: a code block is not closed"
    return out


def following(all_blocks: List[Block], block: Block, lang: str) -> Block:
    """The first block of language ``lang`` after ``block``."""
    for b in all_blocks[all_blocks.index(block) + 1:]:
        if b.lang == lang:
            return b
    raise AssertionError(f"no {lang} block after the {block.lang} block of {block.section!r}")


def live_streams(url: str) -> List[str]:
    with ms.Client(url) as c:
        return [s.name for s in c.list()]


def test_readme_c_example_builds_and_runs(tmp_path: Path, server: Server) -> None:
    all_blocks = blocks(README)
    [c] = [b for b in all_blocks if b.lang == "c"]
    build = following(all_blocks, c, "sh")
    expected = following(all_blocks, c, "text").code.splitlines()

    # The document installs the library under .run/usr of the repository
    # and builds app.c beside it; here the prefix is a temporary one.
    (tmp_path / "app.c").write_text(c.code)
    (tmp_path / "include").symlink_to(REPO / "include")
    prefix = tmp_path / "usr"

    commands = [line for line in build.code.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0] == 'make install PREFIX="$PWD/.run/usr"', commands
    assert commands[-1].startswith("./app"), commands
    r = subprocess.run(["bash", "-c", commands[0].replace('"$PWD/.run/usr"', f'"{prefix}"')], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    script = "\n".join(commands[1:-1]).replace('"$PWD/.run/usr', f'"{prefix}')
    assert str(prefix) in script, script
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"{script}\n{r.stderr}"
    # The example is clean C99 too.
    r = subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-Iinclude", "app.c"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr

    def check(r: subprocess.CompletedProcess) -> None:
        assert r.returncode == 0, r.stderr
        got = r.stdout.splitlines()
        m = re.match(r"^sortie/(\d+) ", got[0] if got else "")
        assert m, r.stdout
        # As documented, with this run's process id for the documented one.
        want = [re.sub(r"sortie/\d+", f"sortie/{m.group(1)}", line) for line in expected]
        assert got == want, r.stdout + r.stderr
        assert f"sortie/{m.group(1)}" not in live_streams(server.url)  # stopped

    # The documented run line: the URL from the environment (`. .run/server/env`).
    env = shell_env(MISSIONSTREAM_URL=server.url)
    for _ in range(10):  # ENDED and state #1 every time (freeing early loses them), each run anew
        check(subprocess.run(["bash", "-c", commands[-1]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60))
    # Or from the first argument.
    check(subprocess.run(["./app", server.url], cwd=tmp_path, env=shell_env(),
                         capture_output=True, text=True, timeout=60))
    r = subprocess.run(["./app"], cwd=tmp_path, env=shell_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "MISSIONSTREAM_URL" in r.stderr, r.stderr


def _normalise(text: str) -> str:
    text = re.sub(r"mission-[0-9a-f]{8}\b", "mission-X", text)
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00", "TIME", text)


def test_python_quick_start_runs_as_written_and_again(tmp_path: Path, server: Server) -> None:
    all_blocks = blocks(PY_README)
    [quick] = [b for b in all_blocks if b.section == "Quick start" and b.lang == "python"]
    expected = following(all_blocks, quick, "text").code
    (tmp_path / "quickstart.py").write_text(quick.code)
    before = set(live_streams(server.url))
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, "quickstart.py"], cwd=tmp_path, env=shell_env(MISSIONSTREAM_URL=server.url),
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert _normalise(r.stdout) == _normalise(expected), r.stdout
    assert set(live_streams(server.url)) <= before  # each run stopped its stream


def test_command_line_walkthrough_runs_as_written_and_again(tmp_path: Path, server: Server) -> None:
    all_blocks = blocks(PY_README)
    [script] = [b for b in all_blocks if b.section == "Command line" and b.lang == "sh"]
    # `. .run/server/env` of the repository root, here the test's server.
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "server").symlink_to(server.dir)
    for _ in range(2):
        r = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script.code], cwd=tmp_path, env=shell_env(),
            capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        watched = [line for line in lines if " seq=" in line]
        assert len(watched) == 1 and re.match(r"^\d\d:\d\d:\d\d\.\d{3} seq=2 age=\d+\.\dms \{", watched[0]), r.stdout
        assert '"waypoints":[[47.39,8.54,30],[47.4,8.55,35]]' in watched[0]
        assert any(line.split()[:2] == ["mission-cli", "2"] for line in lines), r.stdout  # list
        assert "mission-cli" not in live_streams(server.url)  # stop


def test_the_protocol_version_is_the_same_everywhere() -> None:
    """README, PROTOCOL.md, the functions library and the client name one version."""
    rust = re.search(r'PROTOCOL_VERSION: &str = "(\d+)"', (REPO / "src/wire/protocol.rs").read_text())
    lua = re.search(r"^local PROTOCOL = '(\d+)'", (REPO / "lua/missionstream.lua").read_text(), re.M)
    readme = re.search(r"protocol version \(now (\d+)\)", (REPO / "README.md").read_text())
    doc = re.search(r"^# missionstream wire protocol \(version (\d+)\)", (REPO / "docs/PROTOCOL.md").read_text(), re.M)
    demo = re.search(r'^PROTOCOL = "(\d+)"', (REPO / "examples/demo.py").read_text(), re.M)
    assert rust and lua and readme and doc and demo
    versions = (rust[1], lua[1], readme[1], doc[1], demo[1])
    assert set(versions) == {rust[1]}, versions


def test_the_demo_runs_and_shows_deltas_on_the_wire() -> None:
    """`make demo`'s script: the small plan end to end, then the survey whose
    waypoint drags cost a few dozen bytes each on the channel."""
    out = subprocess.run(
        ["scripts/demo.sh", "--seconds", "1", "--survey-updates", "5"],
        cwd=REPO, env=shell_env(), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the leader stopped the stream (ENDED)" in out.stdout, out.stdout
    m = re.search(r"summary:  (\d+) of (\d+) updates seen on the channel went as deltas, median (\d+) bytes against ([\d,]+)", out.stdout)
    assert m, out.stdout
    assert m[1] == m[2] == "5", out.stdout
    assert int(m[3]) < 200 < 500_000 < int(m[4].replace(",", "")), out.stdout
    assert "byte for byte: True" in out.stdout, out.stdout


def test_layout_names_every_module() -> None:
    """README's Layout names every module of the library (src/) and of the
    Python package: a module added without a word there fails here."""
    text = README.read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("\n## ")] if "\n## " in layout else layout
    src = REPO / "src"
    modules = sorted({p.stem for p in src.glob("*.rs") if p.stem != "lib"}
                     | {p.name for p in src.iterdir() if p.is_dir()}
                     | {p.stem for p in src.glob("*/*.rs") if p.stem != "mod"})
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"README's Layout does not name src/ modules {missing}"
    package = PYTHON_DIR / "missionstream"
    python = sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))
    missing = [m for m in python if f"`{m}`" not in layout]
    assert not missing, f"README's Layout does not name Python modules {missing}"
