"""`pip install ./bindings/python` in a fresh virtual environment gives a
package that works from anywhere (the library is built and shipped), in a
platform wheel with the library stripped."""

import os
import struct
import subprocess
import sysconfig
import venv
import zipfile
from pathlib import Path
from typing import List

PKG = Path(__file__).resolve().parent.parent


def elf_sections(data: bytes) -> List[str]:
    """Section names of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset, strtab_size = headers[shstrndx][4], headers[shstrndx][5]
    strtab = data[strtab_offset:strtab_offset + strtab_size]
    return [strtab[h[0]:strtab.index(b"\0", h[0])].decode() for h in headers]


def test_pip_install_in_a_fresh_venv(tmp_path, url):
    server_url = url
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("MISSIONSTREAM_LIB", "PYTHONPATH")}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [str(py), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(PKG)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    [wheel] = list(wheels.glob("*.whl"))
    # Native code inside: a platform wheel, any Python 3 (ctypes, no Python ABI).
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheel.name == f"missionstream-0.1.0-py3-none-{platform}.whl", wheel.name
    with zipfile.ZipFile(wheel) as zf:
        assert "Root-Is-Purelib: false" in zf.read("missionstream-0.1.0.dist-info/WHEEL").decode()
        lib = zf.read("missionstream/libmissionstream.so")
    sections = elf_sections(lib)
    assert ".dynsym" in sections and ".text" in sections, sections
    assert not [s for s in sections if s.startswith(".debug") or s == ".symtab"], sections

    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    code = (
        "import missionstream, sys\n"
        "print(missionstream.library_version())\n"
        "print(missionstream.library_path)\n"
        "with missionstream.Client(sys.argv[1]) as c:\n"
        "    print(len(c.list()) >= 0)\n"
    )
    out = subprocess.run(
        [str(py), "-c", code, server_url], check=True, env=env, cwd=tmp_path, capture_output=True, text=True
    ).stdout.split()
    assert out[0].count(".") == 2, out
    assert out[1].startswith(str(env_dir)), out  # the copy shipped in the package
    assert out[2] == "True"
    # The installed command line works too.
    out = subprocess.run(
        [str(env_dir / "bin" / "missionstream"), "--url", server_url, "list"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
