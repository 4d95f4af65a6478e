// The view front (deploy/nginx-view.conf) at the HTTP level, in front of
// real Redis + Webdis (plain HTTP on loopback here; view.test.js runs it
// with TLS and HTTP/2): the JS client through it by POST, preflights of
// allowed origins with a cache lifetime, other origins refused before
// anything runs, and only the page's files and the protocol served.
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { Client, EventKind, PROTOCOL_VERSION as V } from "../../bindings/js/src/index.js";
import { startServer, uniqueName, waitEvent, REPO } from "../../bindings/js/test/helpers.js";

let srv, port, base;
const ALLOWED = "https://mission-console.example.org"; // allowed by deploy/nginx-webdis.conf as shipped

before(() => {
  srv = startServer();
  const wport = /WEBDIS_PORT=(\d+)/.exec(readFileSync(`${srv.dir}/env`, "utf8"))[1];
  execFileSync(path.join(REPO, "scripts", "view.sh"), ["start", srv.dir, wport], { stdio: "inherit" });
  port = Number(/VIEW_PORT=(\d+)/.exec(readFileSync(`${srv.dir}/view.env`, "utf8"))[1]);
  base = `http://127.0.0.1:${port}`;
});
after(() => {
  if (srv) {
    try { execFileSync(path.join(REPO, "scripts", "view.sh"), ["stop", srv.dir]); } catch { /* stopped */ }
    srv.stop();
  }
});

/** A raw request (the path exactly as given). */
function request(method, rawPath, headers = {}, body = "") {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: rawPath, headers: { ...headers, "Content-Length": Buffer.byteLength(body) } }, (res) => {
      let data = "";
      res.on("data", (d) => { data += d; });
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

test("the JS client leads and follows through the front, every call a POST", async () => {
  const a = new Client(base, { post: true, iterations: 100000, heartbeatMs: 500 });
  const b = new Client(base, { post: true });
  const name = uniqueName("front");
  const log = () => readFileSync(`${srv.dir}/view/access.log`, "utf8");
  try {
    const leader = await a.start(name, "pw", "code");
    leader.publish({ n: 1, text: "é".repeat(300) });
    await leader.flush();
    const f = await b.follow(name, "pw");
    await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_STATE && e.seq === 1);
    leader.publish({ n: 2, text: "é".repeat(299) + "è" });
    await leader.flush();
    const ev = await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_STATE && e.seq === 2);
    assert.deepEqual(JSON.parse(ev.data), { n: 2, text: "é".repeat(299) + "è" });
    await leader.stop();
    await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_ENDED);
    const lines = log().split("\n").filter((l) => l.includes("FCALL"));
    assert.ok(lines.length >= 6 && lines.every((l) => l.includes(" POST ")), "every call by POST");
    assert.ok(lines.some((l) => l.includes("FCALL/ms_publish 200")), "ms_publish passed");
  } finally {
    await a.close();
    await b.close();
  }
});

test("preflights of an allowed origin are answered with a cache lifetime; other origins are refused before anything runs", async () => {
  const pre = await request("OPTIONS", `/FCALL/ms_list/1/streams/${V}/n1/0`, {
    Origin: ALLOWED, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type",
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers["access-control-allow-origin"], ALLOWED);
  assert.equal(pre.headers["access-control-max-age"], "600");
  assert.match(pre.headers["access-control-allow-methods"], /POST/);

  const ok = await request("POST", `/FCALL/ms_list/1/streams/${V}/n2/0`, { Origin: ALLOWED, "Content-Type": "text/plain" });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers["access-control-allow-origin"], ALLOWED);
  assert.equal(JSON.parse(ok.body).FCALL[0], "n2");

  // A simple POST from a page not allowed: refused, and nothing ran (no stream was created).
  const name = uniqueName("evil");
  const key = "a".repeat(64), hex32 = "b".repeat(32);
  const body = `64 64 32 32\n${key}${key}${hex32}${hex32}${hex32}`;
  const enc = name.replace(/[^A-Za-z0-9_-]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  const p = `/FCALL/ms_start/3/stream%3A${enc}/streams/msl%3A${enc}/${V}/n3/500/0/pbkdf2-sha256/100000`;
  const evil = await request("POST", p, { Origin: "https://evil.example", "Content-Type": "text/plain" }, body);
  assert.equal(evil.status, 403);
  assert.equal(evil.headers["access-control-allow-origin"], undefined);
  assert.equal(srv.redis("EXISTS", `stream:${name}`), "0");
  const refusedPre = await request("OPTIONS", `/FCALL/ms_list/1/streams/${V}/n4/0`, { Origin: "https://evil.example", "Access-Control-Request-Method": "PUT" });
  assert.equal(refusedPre.status, 403);
  // The same call from this front's own origin (the bundled page) runs.
  const own = await request("POST", p, { Origin: base, "Content-Type": "text/plain" }, body);
  assert.equal(own.status, 200, own.body);
  assert.equal(srv.redis("EXISTS", `stream:${name}`), "1");
  srv.redis("DEL", `stream:${name}`);
  srv.redis("HDEL", "streams", name);
});

test("only the page's files and the protocol are served", async () => {
  const page = await request("GET", "/view/");
  assert.equal(page.status, 200);
  assert.match(page.headers["content-type"], /text\/html/);
  assert.match(page.headers["content-security-policy"], /default-src 'self'/);
  const js = await request("GET", "/view/missionstream/index.js");
  assert.equal(js.status, 200);
  assert.match(js.headers["content-type"], /javascript/);
  assert.equal((await request("GET", "/")).status, 302);
  for (const p of [`/view/../FCALL/ms_list/1/streams/${V}/n/0`, "/view/missionstream/../../Cargo.toml", "/view/index.html?x=1", "/view/a.json", `/FCALL/ms_list/1/streams/${V}/n.json/0`, "/GET/x", `/5/FCALL/ms_list/1/streams/${V}/n/0`]) {
    const r = await request("GET", p);
    assert.ok([403, 404, 405].includes(r.status), `${p}: ${r.status}`);
  }
  assert.equal((await request("POST", "/view/index.html", { "Content-Type": "text/plain" }, "x")).status, 403);
  assert.equal((await request("DELETE", `/FCALL/ms_list/1/streams/${V}/n/0`)).status, 405);
  assert.equal((await request("GET", `/FCALL/ms_list/1/streams/${V}/n/0`)).status, 405);
});
