"""Builds the Rust library into the package when installed from a checkout.

`pip install ./bindings/python` runs `cargo build --release` in the
repository root and ships target/release/libmissionstream.so (or that of
$CARGO_TARGET_DIR) inside the package, stripped of its debug information,
so the installed package works from anywhere. Set MISSIONSTREAM_LIB to ship
an already built library instead; outside a checkout (no Cargo.toml two
folders up) nothing is built and the package looks for the library at run
time (see missionstream/_ffi.py).

A wheel that carries the library is a platform wheel (e.g.
``py3-none-linux_x86_64``): the library is native code, but it is loaded
with ctypes, so any Python 3 of that platform can use it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIB_NAMES = {"darwin": "libmissionstream.dylib", "win32": "missionstream.dll"}
LIB = LIB_NAMES.get(sys.platform, "libmissionstream.so")


def bundles_library():
    """True when the package will carry the native library."""
    return bool(os.environ.get("MISSIONSTREAM_LIB")) or (REPO / "Cargo.toml").is_file()


def target_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        path = Path(env)
        return path if path.is_absolute() else REPO / path
    return REPO / "target"


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
    return target_dir() / "release" / LIB


def strip(path):
    """Drop debug information and local symbols; the exported C ABI stays."""
    if sys.platform == "win32":
        return
    tool = shutil.which("strip")
    if tool is None:
        print(f"missionstream: 'strip' not found (binutils): {path.name} keeps its debug information",
              file=sys.stderr)
        return
    args = [tool, "-x", "-S", str(path)] if sys.platform == "darwin" else [tool, "--strip-unneeded", str(path)]
    subprocess.run(args, check=True)


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
        shutil.copyfile(lib, dest)
        os.chmod(dest, 0o755)
        strip(dest)


class PackageDistribution(Distribution):
    """Carrying the native library makes the package platform-specific
    (installed into platlib, built into a platform wheel)."""

    def has_ext_modules(self):
        return bundles_library()


cmdclass = {"build_py": BuildWithLibrary}

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """``py3-none-<platform>``: any Python 3, no Python ABI (ctypes), one platform."""

        def get_tag(self):
            python, abi, plat = super().get_tag()
            if bundles_library():
                return "py3", "none", plat
            return python, abi, plat

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass, distclass=PackageDistribution)
