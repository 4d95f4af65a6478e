"""`pip install ./bindings/python` in a fresh virtual environment gives a
package that works from anywhere (the library is built and shipped)."""

import os
import subprocess
import venv
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent


def test_pip_install_in_a_fresh_venv(tmp_path, url):
    server_url = url
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("MISSIONSTREAM_LIB", "PYTHONPATH")}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(PKG)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    code = (
        "import missionstream, sys\n"
        "print(missionstream.library_version())\n"
        "with missionstream.Client(sys.argv[1]) as c:\n"
        "    print(len(c.list()) >= 0)\n"
    )
    out = subprocess.run(
        [str(py), "-c", code, server_url], check=True, env=env, cwd=tmp_path, capture_output=True, text=True
    ).stdout.split()
    assert out[0].count(".") == 2, out
    assert out[1] == "True"
    # The installed command line works too.
    out = subprocess.run(
        [str(env_dir / "bin" / "missionstream"), "--url", server_url, "list"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
