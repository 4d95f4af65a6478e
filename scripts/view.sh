#!/usr/bin/env bash
# Starts or stops nginx serving the live plan view and the protocol on one
# origin (deploy/nginx-view.conf, with the upstream, origin list and limits
# of deploy/nginx-webdis.conf), in front of a running Webdis, on a free
# loopback port.
#
#   scripts/view.sh start DIR WEBDIS_PORT [CERT KEY]   # writes DIR/view.env
#   scripts/view.sh stop DIR
#
# With CERT and KEY (PEM files) it listens with TLS and HTTP/2, as deployed,
# and with TLS and HTTP/1.1 only on a second port (the plan view opened
# from VIEW_H1_URL/view/, one origin); without, plain HTTP/1.1 on
# 127.0.0.1 (a loopback page is a secure context to browsers, so WebCrypto
# works: the demo's way). DIR/view.env:
#   VIEW_URL=http(s)://127.0.0.1:PORT/view/   VIEW_PORT=PORT
#   VIEW_H1_URL=https://127.0.0.1:PORT2       VIEW_H1_PORT=PORT2 (TLS only)
# MS_VIEW_ORIGINS="https://a.example https://localhost:PORT" allows more web
# origins (PORT: this front's port) beside those of nginx-webdis.conf.
# MS_NGINX names another nginx than the one on PATH (or /usr/sbin/nginx).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR WEBDIS_PORT [CERT KEY] | stop DIR" >&2; exit 2; }
nginx=${MS_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
# shellcheck source=scripts/processes.sh
. "$here/scripts/processes.sh"

case "$cmd" in
start)
  wport=${3:?WEBDIS_PORT}; cert=${4:-}; key=${5:-}
  mkdir -p "$dir/view/temp"; dir=$(cd "$dir" && pwd)
  if running "$dir/view/nginx.pid" nginx; then echo "the view front of $dir runs already" >&2; exit 1; fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  h1port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
  python3 - "$here" "$dir/view" "$wport" "$port" "$cert" "$key" "$h1port" <<'PY'
import re, sys
here, d, wport, port, cert, key, h1port = sys.argv[1:]
tls = bool(cert)
main = open(f"{here}/deploy/nginx-webdis.conf").read()
# The http-level part of nginx-webdis.conf: upstream, maps, log format, zones.
pre = main[: main.index("\nserver {")]
pre = re.sub(r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{wport};", pre)
# MS_VIEW_ORIGINS: more web origins allowed (space-separated; PORT stands
# for this front's port), added to the origin list.
import os
extra = os.environ.get("MS_VIEW_ORIGINS", "").replace("PORT", port).split()
if extra:
    anchor = '    ""                                      none;\n'
    assert anchor in pre, "nginx-webdis.conf changed shape: update scripts/view.sh"
    pre = pre.replace(anchor, anchor + "".join(f'    "{o}" allowed;\n' for o in extra))
out = []
for line in open(f"{here}/deploy/nginx-view.conf").read().splitlines():
    t = line.strip()
    w = t.split()[0] if t else ""
    if w == "listen":
        if "http2" not in t.split("#")[0]:
            # The HTTP/1.1 listener (TLS only; none without TLS, where
            # everything is HTTP/1.1 anyway).
            if not tls:
                continue
            line = f"    listen 127.0.0.1:{h1port} ssl;"
        else:
            line = f"    listen 127.0.0.1:{port} ssl http2;" if tls else f"    listen 127.0.0.1:{port};"
    elif w in ("ssl_certificate", "ssl_certificate_key", "ssl_protocols", "ssl_session_cache"):
        if not tls:
            continue
        if w == "ssl_certificate":
            line = f"    ssl_certificate {cert};"
        elif w == "ssl_certificate_key":
            line = f"    ssl_certificate_key {key};"
    elif w == "access_log":
        line = f"    access_log {d}/access.log missionstream;"
    elif w == "alias":
        line = line.replace("/usr/share/missionstream/web/", f"{here}/web/").replace("/usr/share/missionstream/js/", f"{here}/bindings/js/src/")
    out.append(line)
open(f"{d}/missionstream.conf", "w").write(pre + "\n" + "\n".join(out) + "\n")
open(f"{d}/nginx.conf", "w").write(f"""daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    include {d}/missionstream.conf;
}}
""")
PY
  "$nginx" -p "$dir/view" -c "$dir/view/nginx.conf" -e "$dir/view/startup.log" </dev/null >/dev/null 2>&1 &
  echo $! > "$dir/view/nginx.pid.launch"
  scheme=http; [ -n "$cert" ] && scheme=https
  for _ in $(seq 100); do
    curl -sk -o /dev/null "$scheme://127.0.0.1:$port/view/" && break
    sleep 0.05
  done
  curl -skf -o /dev/null "$scheme://127.0.0.1:$port/view/" || {
    echo "nginx did not start: $(cat "$dir/view/startup.log" "$dir/view/error.log" 2>/dev/null)" >&2
    stop_one "$dir/view/nginx.pid.launch" nginx KILL; exit 1; }
  printf 'VIEW_URL=%s://127.0.0.1:%s/view/\nVIEW_PORT=%s\n' "$scheme" "$port" "$port" > "$dir/view.env"
  if [ -n "$cert" ]; then
    printf 'VIEW_H1_URL=https://127.0.0.1:%s\nVIEW_H1_PORT=%s\n' "$h1port" "$h1port" >> "$dir/view.env"
  fi
  ;;
stop)
  [ -d "$dir/view" ] || exit 0
  stop_one "$dir/view/nginx.pid.launch" nginx TERM
  rm -f "$dir/view.env"
  ;;
*) echo "usage: $0 start DIR WEBDIS_PORT [CERT KEY] | stop DIR" >&2; exit 2 ;;
esac
