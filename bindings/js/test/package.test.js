// `npm pack` makes an installable package, and the README's example runs
// from it as printed (against a real Redis + Webdis).
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, rmSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startServer, JS_DIR } from "./helpers.js";

let srv, work;
before(() => { srv = startServer(); work = mkdtempSync(path.join(tmpdir(), "ms-js-pack-")); });
after(() => { srv && srv.stop(); work && rmSync(work, { recursive: true, force: true }); });

test("npm pack, npm install of the package file, and the README example run from it", () => {
  const npmEnv = { ...process.env, npm_config_cache: path.join(work, "npm-cache"), npm_config_update_notifier: "false", npm_config_audit: "false", npm_config_fund: "false" };
  const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", work], { cwd: JS_DIR, env: npmEnv, encoding: "utf8" }));
  const files = packed[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "index.d.ts", "package.json", "src/delta.js", "src/index.js", "src/messages.js"]);
  const app = path.join(work, "app");
  execFileSync("mkdir", ["-p", app]);
  writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", type: "module", private: true }));
  execFileSync("npm", ["install", "--offline", "--no-package-lock", path.join(work, packed[0].filename)], { cwd: app, env: npmEnv, stdio: "ignore" });
  assert.ok(readdirSync(path.join(app, "node_modules", "missionstream")).includes("index.d.ts"));

  const readme = readFileSync(path.join(JS_DIR, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/```(\w+)\n([\s\S]*?)```/g)];
  const example = blocks.find((b) => b[1] === "js")[2];
  const expected = blocks.find((b, i) => b[1] === "text" && i > blocks.indexOf(blocks.find((x) => x[1] === "js")))[2];
  writeFileSync(path.join(app, "example.mjs"), example);
  const out = execFileSync("node", ["example.mjs"], { cwd: app, env: { ...process.env, MISSIONSTREAM_URL: srv.url }, encoding: "utf8", timeout: 60000 });
  assert.equal(out, expected);
});

test("the repository README's embedding example follows a stream through the view front, by POST", async () => {
  const { spawn } = await import("node:child_process");
  const { Client } = await import("../src/index.js");
  const { REPO } = await import("./helpers.js");
  const wport = /WEBDIS_PORT=(\d+)/.exec(readFileSync(`${srv.dir}/env`, "utf8"))[1];
  execFileSync(path.join(REPO, "scripts", "view.sh"), ["start", srv.dir, wport], { stdio: "inherit" });
  const front = new URL(/VIEW_URL=(\S+)/.exec(readFileSync(`${srv.dir}/view.env`, "utf8"))[1]).origin;
  const c = new Client(srv.url, { iterations: 100000 });
  try {
    const readme = readFileSync(path.join(REPO, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("## JavaScript"));
    const example = /```js\n([\s\S]*?)```/.exec(section)[1];
    assert.ok(example.includes('"https://view.example.org"'));
    const app = path.join(work, "app");
    writeFileSync(path.join(app, "embed.mjs"), example.replace('"https://view.example.org"', JSON.stringify(front)));
    const leader = await c.start("survey", "password", "code");
    leader.publish({ fileType: "Plan", mission: { items: [{}, {}, {}] } });
    await leader.flush();
    const p = spawn("node", ["embed.mjs"], { cwd: app });
    let out = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { out += d; });
    const exited = new Promise((r) => p.on("exit", r));
    const deadline = Date.now() + 20000;
    while (!out.includes("seq 1: 3 mission items") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await leader.stop();
    const code = await Promise.race([exited, new Promise((r) => setTimeout(() => { p.kill(); r("killed"); }, 20000))]);
    assert.equal(code, 0, out);
    assert.equal(out, "seq 1: 3 mission items\nMS_EVENT_ENDED\n");
    assert.ok(readFileSync(`${srv.dir}/view/access.log`, "utf8").includes(" POST FCALL/ms_connect 200"), "the example's calls went by POST");
  } finally {
    await c.close();
    execFileSync(path.join(REPO, "scripts", "view.sh"), ["stop", srv.dir]);
  }
});
