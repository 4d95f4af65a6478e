// Headless Chromium (Debian's `chromium`) driven over the DevTools
// protocol on a pipe (--remote-debugging-pipe: NUL-terminated JSON on fds
// 3 and 4), with no dependency.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export async function launch() {
  const profile = mkdtempSync(path.join(tmpdir(), "ms-chromium-"));
  const bin = process.env.MS_CHROMIUM || "chromium";
  const proc = spawn(bin, [
    "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
    "--ignore-certificate-errors", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-extensions", "--window-size=1000,1400",
    `--user-data-dir=${profile}`, "about:blank",
  ], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr = (stderr + d).slice(-4000); });
  const out = proc.stdio[3], inp = proc.stdio[4];
  let id = 0, buf = "";
  const pending = new Map();
  const listeners = [];
  inp.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\0")) >= 0) {
      const msg = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (msg.id && pending.has(msg.id)) {
        const p = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result);
      } else if (msg.method) {
        for (const l of listeners) l(msg);
      }
    }
  });
  const exited = new Promise((r) => proc.on("exit", r));
  // Chromium gone (crashed, or killed from outside): every call waiting
  // for an answer fails with its last words instead of waiting forever.
  exited.then((code) => {
    for (const [, p] of pending) p.reject(new Error(`${p.method}: chromium exited (${code}): ${stderr.slice(-1000)}`));
    pending.clear();
  });
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    if (proc.exitCode !== null || proc.signalCode !== null) { reject(new Error(`${method}: chromium exited: ${stderr.slice(-1000)}`)); return; }
    const m = { id: ++id, method, params };
    if (sessionId) m.sessionId = sessionId;
    pending.set(m.id, { resolve, reject, method });
    out.write(JSON.stringify(m) + "\0");
  });
  const targets = await Promise.race([
    send("Target.getTargets"),
    exited.then(() => { throw new Error(`chromium exited: ${stderr}`); }),
  ]);
  const page = targets.targetInfos.find((t) => t.type === "page");
  const { sessionId } = await send("Target.attachToTarget", { targetId: page.targetId, flatten: true });
  const s = (method, params) => send(method, params, sessionId);
  await s("Page.enable");
  await s("Runtime.enable");
  const consoleLines = [];
  listeners.push((m) => {
    if (m.method === "Runtime.consoleAPICalled") consoleLines.push(m.params.args.map((a) => a.value ?? a.description).join(" "));
    if (m.method === "Runtime.exceptionThrown") consoleLines.push("exception: " + JSON.stringify(m.params.exceptionDetails).slice(0, 500));
  });
  return {
    send: s,
    console: consoleLines,
    on(fn) { listeners.push(fn); },
    async goto(url) {
      // (A URL that differs only in its #fragment is no new document: go by about:blank.)
      await s("Page.navigate", { url: "about:blank" });
      let t;
      const loaded = new Promise((r, j) => {
        listeners.push((m) => { if (m.method === "Page.loadEventFired") r(); });
        t = setTimeout(() => j(new Error(`${url} did not load within 20 s`)), 20000);
      });
      await s("Page.navigate", { url });
      await loaded.finally(() => clearTimeout(t));
      // (The load event of about:blank may come late: wait for this URL's document.)
      await this.waitFor(`location.href === ${JSON.stringify(url)} && document.readyState === "complete"`);
    },
    /** Evaluates an expression in the page (awaiting a promise); returns its JSON value. */
    async eval(expression) {
      const r = await s("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
      if (r.exceptionDetails) throw new Error(`in the page: ${r.exceptionDetails.exception?.description || r.exceptionDetails.text}`);
      return r.result.value;
    },
    async waitFor(expression, timeoutMs = 20000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const v = await this.eval(expression);
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`not true within ${timeoutMs} ms: ${expression}; console: ${consoleLines.slice(-10).join(" | ")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async screenshot() {
      const { data } = await s("Page.captureScreenshot", { format: "png" });
      return Buffer.from(data, "base64");
    },
    async close() {
      try { await Promise.race([send("Browser.close"), new Promise((r) => setTimeout(r, 3000))]); } catch { /* gone */ }
      if (proc.exitCode === null) proc.kill("SIGKILL");
      await exited;
      try { rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }); } catch { /* chromium's last writes */ }
    },
  };
}
