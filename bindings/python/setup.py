"""Builds the Rust library into the package when installed from a checkout.

`pip install ./bindings/python` runs `cargo build --release` in the
repository root and ships target/release/libmissionstream.so inside the
package, so the installed package works from anywhere. Set
MISSIONSTREAM_LIB to ship an already built library instead; outside a
checkout (no Cargo.toml two folders up) nothing is built and the package
looks for the library at run time (see missionstream/_ffi.py).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIB_NAMES = {"darwin": "libmissionstream.dylib", "win32": "missionstream.dll"}
LIB = LIB_NAMES.get(sys.platform, "libmissionstream.so")


def find_or_build_library():
    env = os.environ.get("MISSIONSTREAM_LIB")
    if env:
        return Path(env)
    if not (REPO / "Cargo.toml").is_file():
        return None
    try:
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"missionstream: building the Rust library failed ({exc}); install a Rust toolchain "
            f"(https://rustup.rs), run 'cargo build --release' in {REPO}, or set MISSIONSTREAM_LIB"
        )
    return REPO / "target" / "release" / LIB


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        lib = find_or_build_library()
        if lib is None:
            return
        if not lib.is_file():
            raise SystemExit(f"missionstream: {lib} does not exist")
        dest = Path(self.build_lib) / "missionstream" / LIB
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)


setup(cmdclass={"build_py": BuildWithLibrary})
