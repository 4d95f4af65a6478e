//! A real TLS front for the test servers: nginx configured from
//! deploy/nginx-webdis.conf, on free loopback ports, with certificates of
//! the tests' own certificate authority made by `openssl`. Dropped, it
//! stops nginx and removes its files.

use super::{free_port, Servers, COUNTER, ROOT};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The web origin deploy/nginx-webdis.conf allows as shipped.
pub const ALLOWED_ORIGIN: &str = "https://mission-console.example.org";

/// nginx: `$MS_NGINX`, else `nginx` from PATH, else Debian's /usr/sbin/nginx
/// (not on a normal user's PATH).
pub fn nginx_binary() -> String {
    if let Some(n) = std::env::var("MS_NGINX").ok().filter(|n| !n.is_empty()) {
        return n;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nginx").is_file()));
    if on_path {
        "nginx".into()
    } else {
        "/usr/sbin/nginx".into()
    }
}

pub struct TlsFront {
    pub dir: PathBuf,
    /// The front of deploy/nginx-webdis.conf; its certificate is for
    /// 127.0.0.1 and localhost.
    pub port: u16,
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// The same front (server block and certificate) on a second port: a
    /// second endpoint for URL lists. `ports.log` tells the requests that
    /// came in through each port apart.
    pub second_port: u16,
    /// `https://127.0.0.1:<second_port>`
    pub second_url: String,
    /// The same server block of deploy/nginx-webdis.conf (same limits,
    /// same zones) on a plain-HTTP port too: raw HTTP clients in the
    /// tests (attackers, stalled subscribers) speak to it without TLS.
    pub plain_port: u16,
    /// The same front with a certificate for another host name only.
    pub wrong_host_port: u16,
    /// The tests' CA, which issued both certificates (PEM).
    pub ca_file: PathBuf,
    /// Another CA, which issued neither.
    pub other_ca_file: PathBuf,
    /// The server's private key (PEM, no certificate in it).
    pub key_file: PathBuf,
    nginx: Option<Child>,
}

/// Runs `openssl` in `dir` with `args` (split at spaces).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (make test installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const OPENSSL_CNF: &str = "\
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
[wrong_host]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:webdis.elsewhere.invalid
authorityKeyIdentifier = keyid
";

const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A self-signed CA: `<name>.crt`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &format!(
            "req -x509 -new {EC_KEY} -keyout {name}.key -out {name}.crt -days 30 \
             -subj /CN=missionstream-test-{name} -config openssl.cnf -extensions ca"
        ),
    );
}

/// A server certificate issued by `ca.crt` with the extensions of
/// `section`: `<name>.crt`, `<name>.key`.
fn make_server_cert(dir: &Path, name: &str, section: &str, serial: u64) {
    openssl(
        dir,
        &format!(
            "req -new {EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name} \
             -config openssl.cnf"
        ),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -set_serial {serial} -days 30 \
             -sha256 -out {name}.crt -extfile openssl.cnf -extensions {section}"
        ),
    );
}

impl TlsFront {
    /// Certificates, the nginx configuration, and nginx started in front
    /// of `servers`' Webdis.
    pub fn start(servers: &Servers) -> TlsFront {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ms-tls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("temp")).unwrap();
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        make_server_cert(&dir, "server", "server", serial);
        make_server_cert(&dir, "wrong-host", "wrong_host", serial + 1);

        let port = free_port();
        let mut wrong_host_port = free_port();
        while wrong_host_port == port {
            wrong_host_port = free_port();
        }
        let mut second_port = free_port();
        while second_port == port || second_port == wrong_host_port {
            second_port = free_port();
        }
        let mut plain_port = free_port();
        while plain_port == port || plain_port == wrong_host_port || plain_port == second_port {
            plain_port = free_port();
        }
        // deploy/nginx-webdis.conf as shipped, but for its addresses, its
        // certificate files and its access log's file (its format kept,
        // and ports.log beside it), and a plain-HTTP listener beside the
        // TLS ones.
        let deploy =
            std::fs::read_to_string(Path::new(ROOT).join("deploy/nginx-webdis.conf")).unwrap();
        let mut site = String::new();
        let mut replaced = Vec::new();
        for line in deploy.lines() {
            let t = line.trim_start();
            let word = t.split_whitespace().next().unwrap_or("");
            let new = match word {
                "server" if t.contains(':') => {
                    format!("server 127.0.0.1:{};", servers.webdis_port)
                }
                "listen" => {
                    format!("listen 127.0.0.1:{port} ssl;\n    listen 127.0.0.1:{second_port} ssl;\n    listen 127.0.0.1:{plain_port};")
                }
                "access_log" => {
                    let format = t
                        .trim_end_matches(|c: char| c != ';')
                        .trim_end_matches(';')
                        .split_whitespace()
                        .nth(2)
                        .unwrap_or_else(|| panic!("no log format in: {t}"))
                        .to_string();
                    format!(
                        "access_log {} {format};\n    access_log {} by_port;",
                        dir.join("access.log").display(),
                        dir.join("ports.log").display()
                    )
                }
                "ssl_certificate" => {
                    format!("ssl_certificate {};", dir.join("server.crt").display())
                }
                "ssl_certificate_key" => {
                    format!("ssl_certificate_key {};", dir.join("server.key").display())
                }
                _ => {
                    site.push_str(line);
                    site.push('\n');
                    continue;
                }
            };
            replaced.push(word.to_string());
            site.push_str(&new);
            site.push('\n');
        }
        replaced.sort();
        assert_eq!(
            replaced,
            [
                "access_log",
                "listen",
                "server",
                "ssl_certificate",
                "ssl_certificate_key"
            ],
            "deploy/nginx-webdis.conf changed shape: update tests/common/tls.rs"
        );
        std::fs::write(dir.join("missionstream.conf"), site).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    log_format by_port '$server_port \"$request\" $status';
    access_log {d}/ports.log by_port;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    fastcgi_temp_path {d}/temp/fastcgi;
    uwsgi_temp_path {d}/temp/uwsgi;
    scgi_temp_path {d}/temp/scgi;
    include {d}/missionstream.conf;
    # The same Webdis behind a certificate for another host name.
    server {{
        listen 127.0.0.1:{wrong_host_port} ssl;
        ssl_certificate {d}/wrong-host.crt;
        ssl_certificate_key {d}/wrong-host.key;
        location / {{ proxy_pass http://missionstream_webdis; }}
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut front = TlsFront {
            url: format!("https://127.0.0.1:{port}"),
            port,
            second_url: format!("https://127.0.0.1:{second_port}"),
            second_port,
            plain_port,
            wrong_host_port,
            ca_file: dir.join("ca.crt"),
            other_ca_file: dir.join("other-ca.crt"),
            key_file: dir.join("server.key"),
            dir,
            nginx: None,
        };
        front.start_nginx();
        front
    }

    /// Starts nginx (again) on the same ports; returns once it listens.
    pub fn start_nginx(&mut self) {
        assert!(self.nginx.is_none(), "nginx runs already");
        let d = &self.dir;
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("startup.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (make test installs it), or MS_NGINX names it");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = [
                self.port,
                self.plain_port,
                self.wrong_host_port,
                self.second_port,
            ]
            .iter()
            .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}{}",
                    std::fs::read_to_string(d.join("startup.log")).unwrap_or_default(),
                    std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nginx = Some(child);
    }

    /// Kills nginx: every connection through it breaks at once.
    pub fn stop_nginx(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An HTTPS request through the front with `curl`, trusting the tests'
    /// CA: the status and the response headers (names lowercase).
    pub fn curl(&self, method: &str, path: &str, headers: &[&str]) -> (u16, Vec<(String, String)>) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&self.ca_file)
        .args(["-X", method]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl is installed (make test installs it)");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = super::raw::parse_head(&out.stdout);
        (r.status, r.headers)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop_nginx();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
