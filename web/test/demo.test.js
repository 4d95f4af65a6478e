// `make demo`'s promise: the URL it prints opens the live plan view, where
// the demo's survey plan is watched changing, waypoint by waypoint, with
// the password it names.
import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { REPO } from "../../bindings/js/test/helpers.js";
import { launch } from "./browser.js";

test("the URL make demo prints shows its survey plan changing", async () => {
  const demo = spawn(path.join(REPO, "scripts", "demo.sh"), ["--seconds", "1", "--survey-updates", "3", "--watch", "90"], {
    cwd: REPO, stdio: ["ignore", "pipe", "pipe"], detached: true,
  });
  let out = "";
  demo.stdout.on("data", (d) => { out += d; });
  demo.stderr.on("data", (d) => { out += d; });
  const exited = new Promise((r) => demo.on("exit", r));
  let browser = null;
  try {
    const deadline = Date.now() + 60000;
    let m;
    while (!(m = /^view: +watch it live at (\S+) \(password: (\S+)\)$/m.exec(out)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(m, `no view URL printed: ${out}`);
    browser = await launch();
    await browser.goto(m[1]);
    await browser.eval(`document.getElementById('password').value = ${JSON.stringify(m[2])}; document.getElementById('join').requestSubmit(); 1`);
    try {
      await browser.waitFor(`window.msView.seq >= 1 && document.querySelectorAll('#map .wp').length >= 1000`, 30000);
    } catch (e) {
      const seen = await browser.eval(`JSON.stringify({seq: window.msView.seq, wps: document.querySelectorAll('#map .wp').length, error: document.getElementById('error').textContent, conn: document.getElementById('conn').textContent, url: location.href, res: performance.getEntriesByType('resource').map(e => e.name.split('/').slice(3,5).join('/') + ':' + Math.round(e.startTime) + '+' + Math.round(e.duration)).slice(-8), name: document.getElementById('name').value, now: Math.round(performance.now())})`);
      throw new Error(`${e.message}; the page: ${seen}; the demo: ${out}`);
    }
    const first = await browser.eval(`window.msView.seq`);
    // The demo drags one waypoint a second: two more updates, each with one highlighted waypoint.
    await browser.waitFor(`window.msView.seq >= ${first + 2}`, 15000);
    assert.equal(await browser.eval(`document.querySelectorAll('#map .wp.changed').length`), 1);
    assert.equal(await browser.eval(`document.getElementById('conn').textContent`), "connected");
    // Ctrl-C ends the watching: the demo stops its stream and reports.
    // The page may have seen two updates while the survey itself still
    // ran (a Ctrl-C then interrupts the demo, not its watching): wait for
    // the watching to have begun.
    const watching = Date.now() + 60000;
    while (!/^watch: +dragging/m.test(out) && Date.now() < watching) await new Promise((r) => setTimeout(r, 100));
    assert.match(out, /^watch: +dragging/m, `the demo never began watching: ${out}`);
    process.kill(-demo.pid, "SIGINT");
    await exited;
    assert.match(out, /byte for byte: True/);
  } finally {
    if (browser) await browser.close();
    if (demo.exitCode === null && demo.signalCode === null) process.kill(-demo.pid, "SIGKILL");
  }
});
