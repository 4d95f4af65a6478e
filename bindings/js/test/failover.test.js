// The JS client on a replicated deployment (scripts/cluster.sh: 3 Redis
// nodes, 1 primary + 2 replicas, 3 Sentinels, one Webdis per node): a JS
// leader and a JS follower given every node's Webdis, through a primary
// whose Redis is killed with SIGKILL (a crash). Real processes on free
// loopback ports. The functions library as deploy/ ships it: channel
// messages on the primary only, followers there; the last test loads it
// with CHANNEL_ON_REPLICAS = true, followers on replicas.
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir, loadavg, cpus } from "node:os";
import path from "node:path";
import { Client, EventKind, Status } from "../src/index.js";
import { REPO, uniqueName } from "./helpers.js";

const CLUSTER_SH = path.join(REPO, "scripts", "cluster.sh");
// Timed bounds scale with the machine's load (the suites run on shared machines).
const factor = Math.max(1, loadavg()[0] / (cpus().length || 1));

let dir;
let env = {};
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), "ms-js-cluster-"));
  execFileSync(CLUSTER_SH, ["start", dir], { stdio: ["ignore", "ignore", "inherit"], timeout: 120000 });
  for (const line of readFileSync(path.join(dir, "env"), "utf8").split("\n")) {
    const m = /^(?:export )?([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) env[m[1]] = m[2].replace(/^["']|["']$/g, "");
  }
  for (const i of [1, 2, 3]) for (const k of ["REDIS", "WEBDIS"]) assert.ok(![6379, 7379, 26379].includes(Number(env[`NODE${i}_${k}_PORT`])));
});
after(() => {
  if (!dir) return;
  try { execFileSync(CLUSTER_SH, ["stop", dir], { stdio: "ignore", timeout: 120000 }); } finally { rmSync(dir, { recursive: true, force: true }); }
});

/** The node (1-3) a Sentinel names as primary; null if none answers. */
function primaryNode() {
  for (const port of env.SENTINEL_PORTS.split(",")) {
    let out;
    try {
      out = execFileSync("redis-cli", ["-p", port, "SENTINEL", "get-master-addr-by-name", env.SENTINEL_MASTER], { encoding: "utf8", timeout: 10000 }).split(/\s+/).filter(Boolean);
    } catch { continue; }
    if (out.length === 2) for (const i of [1, 2, 3]) if (env[`NODE${i}_REDIS_PORT`] === out[1]) return i;
  }
  return null;
}

const redis = (node, ...args) => execFileSync("redis-cli", ["-p", env[`NODE${node}_REDIS_PORT`], ...args], { encoding: "utf8", timeout: 10000 }).trim();

async function until(what, check, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const opts = { timeoutMs: 5000, iterations: 100000, heartbeatMs: 500 };

/** PUBSUB NUMSUB of `channel` on node `node` (1-3). */
const numsub = (node, channel) => Number(redis(node, "PUBSUB", "NUMSUB", channel).split("\n")[1]);

test("a replica refuses writes; the client finds the primary wherever it is listed and follows on the primary", async () => {
  const urls = env.MS_URLS.split(",");
  assert.equal(urls.length, 3);
  // The primary last: the first write meets a replica's READONLY and moves on.
  const c = new Client([...urls.slice(1), urls[0]], opts);
  const name = uniqueName("ha");
  try {
    const leader = await c.start(name, "pw", "code");
    assert.equal(c.primary, 2, "writes go to the primary (listed last)");
    assert.equal(c.base, urls[0]);
    leader.publish({ n: 1 });
    await leader.flush();
    const f = await c.follow(name, "pw");
    assert.equal(await f.waitFor(1, 15000 * factor), true);
    assert.deepEqual(f.json(), { n: 1 });
    // Only the primary carries the channel (the library's default): the
    // follower subscribes there, though the replicas are listed first.
    assert.equal(f.onReplicas, false);
    assert.equal(f.node, 2, "the follower subscribes on the primary");
    const channel = leader.channel;
    const primary = primaryNode();
    for (const k of [1, 2, 3]) assert.equal(numsub(k, channel), k === primary ? 1 : 0, `node ${k} (the primary: ${primary})`);
    leader.publish({ n: 2 });
    await leader.flush();
    assert.equal(await f.waitFor(leader.seq, 15000 * factor), true);
    assert.deepEqual(f.json(), { n: 2 });
    await leader.stop();
  } finally {
    await c.close();
  }
});

test("a JS leader and a JS follower through a SIGKILLed primary: the follower ends on the leader's last flushed state, in order", async () => {
  const urls = env.MS_URLS.split(",");
  const old = primaryNode();
  assert.ok(old !== null, "no Sentinel names the primary");
  // The leader lists the primary first (its calls start on the node that
  // dies); the follower gets the list as an array, the primary last.
  const lc = new Client(env.MS_URLS, opts);
  const fc = new Client([...urls.slice(1), urls[0]], opts);
  const name = uniqueName("ha");
  const seen = [];
  const trouble = [];
  let feeding = true;
  let feeder;
  try {
    const leader = await lc.start(name, "pw", "code");
    const plan = (n) => ({ n, waypoints: Array.from({ length: 40 }, (_, i) => [47 + i / 1000, 8.5 + n / 1e6, 30]) });
    let n = 0;
    leader.publish(plan(n));
    await leader.flush(30000 * factor);
    const f = await fc.follow(name, "pw", {
      onEvent: (ev) => {
        if (ev.kind === EventKind.MS_EVENT_STATE) seen.push({ seq: ev.seq, n: JSON.parse(ev.data).n });
        else trouble.push(ev.kindName);
      },
    });
    assert.equal(await f.waitFor(1, 30000 * factor), true);
    feeder = (async () => {
      while (feeding) {
        n += 1;
        leader.publish(plan(n));
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    await until("states flow before the kill", () => seen.length >= 5, 30000 * factor);
    await new Promise((r) => setTimeout(r, 1500)); // the subscription in its steady state
    const before = f.seq;
    const pid = Number(readFileSync(path.join(dir, `node${old}`, "redis.pid.launch"), "utf8"));
    process.kill(pid, "SIGKILL");
    // Sentinel promotes a replica; the leader stores again, there.
    await until("Sentinel promoted a replica", () => { const p = primaryNode(); return p !== null && p !== old; }, 60000 * factor);
    const promoted = primaryNode();
    await until("the leader writes to the new primary", () => lc.primary === promoted - 1, 60000 * factor);
    await until("the follower gets states again", () => f.seq > before + 3, 60000 * factor);
    feeding = false;
    await feeder;
    const last = JSON.stringify(plan(n));
    await leader.flush(60000 * factor);
    assert.equal(leader.ended, false, "the lead survived the failover");
    // The stored state is the last one, on the new primary.
    const snap = await lc.call("ms_snapshot", { ro: true, keys: ["stream:" + name, "msl:" + name], args: ["-"], fields: [leader.channel] });
    const message = String(snap[5]);
    assert.equal(message.slice(message.indexOf("\n") + 1), last);
    await until("the follower holds the leader's last flushed state", () => f.latest === last, 60000 * factor);
    assert.equal(f.ended, false);
    // It follows the new primary (the only node that carries the channel).
    await until("the follower subscribed on the promoted primary", () => numsub(promoted, leader.channel) === 1, 30000 * factor);
    // Never out of order: seq and the plan's n only ever grow.
    for (let i = 1; i < seen.length; i++) {
      assert.ok(seen[i].seq > seen[i - 1].seq, `seq went back: ${JSON.stringify(seen.slice(Math.max(0, i - 3), i + 2))}`);
      assert.ok(seen[i].n > seen[i - 1].n, `a state older than one delivered came after it: ${JSON.stringify(seen.slice(Math.max(0, i - 3), i + 2))}`);
    }
    assert.equal(seen[seen.length - 1].n, n);
    // Nothing ended the follow; whatever trouble it saw, it got over.
    assert.ok(!trouble.includes("MS_EVENT_ENDED"), trouble.join(","));
    if (trouble.includes("MS_EVENT_CONNECTION_LOST")) assert.ok(trouble.includes("MS_EVENT_RECONNECTED"), trouble.join(","));
    // The leader's heartbeats reach the follower again: online, connected.
    await until("the follower hears the leader again", () => f.leaderOnline && f.connected, 30000 * factor);
    if (trouble.includes("MS_EVENT_LEADER_OFFLINE")) assert.ok(trouble.includes("MS_EVENT_LEADER_ONLINE"), trouble.join(","));
    assert.equal(redis(promoted, "ROLE").split("\n")[0], "master");
    console.log(`killed node ${old}, node ${promoted} promoted; the follower got ${seen.length} states (seq ${seen[0].seq}..${f.seq}), events: ${trouble.join(",") || "none"}`);
    await leader.stop();
    await until("the follower sees the end", () => f.ended, 30000 * factor);
  } finally {
    feeding = false;
    await feeder;
    await lc.close();
    await fc.close();
  }
});

test("a follower whose node dies resubscribes on another and ends on the leader's last state", async () => {
  // (After the test above: a promoted primary, one replica, one node down.)
  // The library loaded anew with CHANNEL_ON_REPLICAS = true, on the primary
  // (replicated to the replica): followers subscribe on the replica.
  const primaryNow = primaryNode();
  const lua = readFileSync(path.join(REPO, "lua", "missionstream.lua"), "utf8").replace(/^local CHANNEL_ON_REPLICAS = .*$/m, "local CHANNEL_ON_REPLICAS = true");
  assert.ok(lua.includes("\nlocal CHANNEL_ON_REPLICAS = true\n"));
  assert.equal(execFileSync("redis-cli", ["-p", env[`NODE${primaryNow}_REDIS_PORT`], "-x", "FUNCTION", "LOAD", "REPLACE"], { input: lua, encoding: "utf8", timeout: 10000 }).trim(), "missionstream");
  const c = new Client(env.MS_URLS, opts);
  const name = uniqueName("ha");
  const nodeOf = (i) => [1, 2, 3].find((k) => env[`NODE${k}_WEBDIS_PORT`] === new URL(c.endpoints[i].base).port);
  try {
    const leader = await c.start(name, "pw", "code");
    leader.publish({ n: 0 });
    await leader.flush(30000 * factor);
    const f = await c.follow(name, "pw");
    assert.equal(await f.waitFor(1, 30000 * factor), true);
    assert.equal(f.onReplicas, true);
    const primary = primaryNode();
    const mine = nodeOf(f.node);
    assert.notEqual(mine, primary, "the follower subscribed on a replica");
    const pid = Number(readFileSync(path.join(dir, `node${mine}`, "redis.pid.launch"), "utf8"));
    process.kill(pid, "SIGKILL");
    for (let n = 1; n <= 20; n++) {
      leader.publish({ n });
      await new Promise((r) => setTimeout(r, 50));
    }
    await leader.flush(30000 * factor);
    await until("the follower holds the last state", () => f.latest === JSON.stringify({ n: 20 }), 60000 * factor);
    assert.notEqual(nodeOf(f.node), mine, "the follower moved to another node");
    assert.equal(f.seq, leader.seq);
    assert.equal(f.ended, false);
    await leader.stop();
    await until("the follower sees the end", () => f.ended, 30000 * factor);
  } finally {
    await c.close();
  }
});

test("with every listed endpoint down a call fails in time, naming each", async () => {
  const c = new Client("http://127.0.0.1:9,http://127.0.0.1:10", { timeoutMs: 2000 });
  const t0 = Date.now();
  await assert.rejects(c.list(), (e) => {
    assert.equal(e.status, Status.MS_ERR_UNAVAILABLE);
    assert.match(e.message, /no Webdis endpoint took ms_list within 2000 ms.*127\.0\.0\.1:9.*127\.0\.0\.1:10/);
    return true;
  });
  assert.ok(Date.now() - t0 < 8000 * factor);
});
