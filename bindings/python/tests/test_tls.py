"""``https://`` with a private certificate authority: ``Client(tls_ca_file=)``
and ``--tls-ca-file``, through a real nginx configured from
deploy/nginx-webdis.conf in front of the session's Webdis, with a
certificate of the test's own CA (made with ``openssl``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

import missionstream as ms
from conftest import REPO, Server, free_port
from test_cli import assert_clean_error, cli

PW = "pw-tls"
CODE = "code-tls"

OPENSSL_CNF = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
"""


class Front:
    def __init__(self, url: str, ca_file: Path, key_file: Path) -> None:
        self.url = url
        self.ca_file = ca_file
        self.key_file = key_file


def _nginx() -> str:
    found = os.environ.get("MS_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(found) and shutil.which(found) is None:
        pytest.fail("nginx is not installed; the TLS tests need it (scripts/install-deps.sh installs it)")
    return found


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def front(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    d = tmp_path_factory.mktemp("tls")
    (d / "temp").mkdir()
    (d / "openssl.cnf").write_text(OPENSSL_CNF)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(d, "req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
             "-subj", "/CN=missionstream python test CA", "-config", "openssl.cnf", "-extensions", "ca")
    _openssl(d, "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
             "-config", "openssl.cnf")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", str(time.time_ns() // 1000), "-days", "30", "-sha256", "-out", "server.crt",
             "-extfile", "openssl.cnf", "-extensions", "server")
    port = free_port()
    # deploy/nginx-webdis.conf as shipped, but for its addresses and files.
    site = []
    for line in (REPO / "deploy" / "nginx-webdis.conf").read_text().splitlines():
        words = line.split()
        word = words[0] if words else ""
        if word == "server" and ":" in line:
            line = f"server 127.0.0.1:{server.webdis_port};"
        elif word == "listen":
            line = f"listen 127.0.0.1:{port} ssl;"
        elif word == "ssl_certificate":
            line = f"ssl_certificate {d / 'server.crt'};"
        elif word == "ssl_certificate_key":
            line = f"ssl_certificate_key {d / 'server.key'};"
        site.append(line)
    (d / "missionstream.conf").write_text("\n".join(site) + "\n")
    temp = "\n".join(f"    {k}_temp_path {d}/temp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {d}/access.log;\n{temp}\n    include {d}/missionstream.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [_nginx(), "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "startup.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (d / "startup.log").read_text() if (d / "startup.log").exists() else ""
                    pytest.fail(f"nginx did not start: {log}")
                time.sleep(0.02)
        yield Front(f"https://127.0.0.1:{port}", d / "ca.crt", d / "server.key")
    finally:
        proc.kill()
        proc.wait()


def test_lead_follow_and_list_over_tls(front: Front, name: str) -> None:
    with ms.Client(front.url, timeout=5, tls_ca_file=front.ca_file) as leader, ms.Client(
        front.url, timeout=5, tls_ca_file=str(front.ca_file)
    ) as follower:
        lead = leader.start(name, PW, CODE)
        follow = follower.connect(name, PW)
        assert follow.next_event(10).data == "{}"
        lead.publish('{"over": "tls"}')
        assert follow.next_event(10).data == '{"over": "tls"}'
        listed = {s.name: s for s in follower.list()}
        assert listed[name].followers == 1
        lead.stop()


def test_untrusted_certificate_and_bad_ca_file(front: Front) -> None:
    with ms.Client(front.url, timeout=10) as web_roots:
        started = time.monotonic()
        with pytest.raises(ms.Unavailable, match="certificate not trusted"):
            web_roots.list()
        assert time.monotonic() - started < 2
    missing = front.ca_file.parent / "missing.pem"
    with pytest.raises(ms.InvalidArgument, match="cannot read the CA file.*missing.pem"):
        ms.Client(front.url, tls_ca_file=missing)
    with pytest.raises(ms.InvalidArgument, match="holds no certificate"):
        ms.Client(front.url, tls_ca_file=os.fsencode(front.key_file))


def test_cli_tls_ca_file(front: Front, name: str) -> None:
    r = cli("lead", name, "--url", front.url, "--tls-ca-file", str(front.ca_file), "--password", PW,
            "--leader-code", CODE, input='{"cli": "tls"}\n')
    assert r.returncode == 0, r.stderr
    r = cli("list", "--json", "--url", front.url, MISSIONSTREAM_TLS_CA_FILE=str(front.ca_file))
    assert r.returncode == 0, r.stderr
    assert name in r.stdout
    # An untrusted certificate: the CLI's own option is named, never the library's function.
    r = cli("list", "--url", front.url)
    assert_clean_error(r, "certificate", "not trusted", "--tls-ca-file", "MISSIONSTREAM_TLS_CA_FILE")
    assert r.returncode == 1 and "ms_" not in r.stderr, r.stderr
    # A CA file that cannot be read is blamed on the option (or variable) that named it, not on --url.
    missing = str(front.ca_file) + ".missing"
    r = cli("list", "--url", front.url, "--tls-ca-file", missing)
    assert_clean_error(r, "--tls-ca-file", missing, "cannot read it")
    assert r.returncode == 2 and "--url" not in r.stderr, r.stderr
    r = cli("list", "--url", front.url, MISSIONSTREAM_TLS_CA_FILE=missing)
    assert_clean_error(r, "$MISSIONSTREAM_TLS_CA_FILE", missing)
    assert r.returncode == 2, r.stderr
    r = cli("stop", name, "--url", front.url, "--tls-ca-file", str(front.ca_file), "--password", PW,
            "--leader-code", CODE)
    assert r.returncode == 0, r.stderr
    assert "--tls-ca-file" in cli("list", "--help").stdout
