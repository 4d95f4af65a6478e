// Real redis-server + webdis pairs for the tests, started with
// scripts/server.sh on free loopback ports (never 6379/7379).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const JS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = path.resolve(JS_DIR, "..", "..");
const SERVER_SH = path.join(REPO, "scripts", "server.sh");

export function startServer() {
  const dir = mkdtempSync(path.join(tmpdir(), "ms-js-"));
  execFileSync(SERVER_SH, ["start", dir], { stdio: ["ignore", "ignore", "inherit"] });
  const env = readFileSync(path.join(dir, "env"), "utf8");
  const url = /MISSIONSTREAM_URL=(\S+)/.exec(env)[1];
  const redisPort = Number(/REDIS_PORT=(\d+)/.exec(env)[1]);
  return {
    dir,
    url,
    redisPort,
    redis(...args) {
      return execFileSync("redis-cli", ["-p", String(redisPort), ...args], { encoding: "utf8" }).trim();
    },
    stop() {
      try { execFileSync(SERVER_SH, ["stop", dir], { stdio: "ignore" }); } finally { rmSync(dir, { recursive: true, force: true }); }
    },
  };
}

let n = 0;
export const uniqueName = (prefix = "js") => `${prefix}-${process.pid}-${Date.now().toString(36)}-${++n}`;

/** Waits for an event matching `pred` (within timeoutMs), returning it; fails with what came instead. */
export async function waitEvent(session, pred, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  const seen = [];
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no matching event within ${timeoutMs} ms; got: ${JSON.stringify(seen.slice(-10))}`);
    const ev = await session.next(left);
    if (ev === undefined) continue;
    if (ev === null) throw new Error(`the session ended; got: ${JSON.stringify(seen.slice(-10))}`);
    seen.push({ kind: ev.kindName, seq: ev.seq, status: ev.status });
    if (pred(ev)) return ev;
  }
}

/** Runs a Python script with the Python binding over target/release/libmissionstream.so. */
export function python(script, args = [], opts = {}) {
  return spawn("python3", ["-c", script, ...args], {
    env: { ...process.env, PYTHONPATH: path.join(REPO, "bindings", "python"), MISSIONSTREAM_LIB: path.join(REPO, "target", "release", "libmissionstream.so") },
    stdio: ["pipe", "pipe", "pipe"],
    ...opts,
  });
}
