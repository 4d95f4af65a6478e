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
  assert.deepEqual(files, ["README.md", "index.d.ts", "package.json", "src/delta.js", "src/index.js"]);
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
