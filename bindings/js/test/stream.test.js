// The JS client against real Redis + Webdis: lead, follow, list, deltas,
// presence, recovery, end, and the errors users see.
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { Client, Status, EventKind, MissionstreamError, PROTOCOL_VERSION } from "../src/index.js";
import { startServer, uniqueName, waitEvent } from "./helpers.js";

let srv;
before(() => { srv = startServer(); });
after(() => srv && srv.stop());

const opts = { timeoutMs: 5000, iterations: 100000, heartbeatMs: 500 };
const isState = (seq) => (ev) => ev.kind === EventKind.MS_EVENT_STATE && ev.seq === seq;

test("a follower gets the current state, then each newer one, deltas included, then the end", async () => {
  const lc = new Client(srv.url, opts);
  const fc = new Client(srv.url, opts);
  const name = uniqueName();
  try {
    const leader = await lc.start(name, "pw", "code");
    const plan = { items: Array.from({ length: 60 }, (_, i) => ({ seq: i, lat: 47 + i / 1000, alt: 30 })) };
    leader.publish(plan);
    await leader.flush();
    const f = await fc.follow(name, "pw");
    const first = await waitEvent(f, isState(1));
    assert.deepEqual(JSON.parse(first.data), plan);
    for (let i = 0; i < 10; i++) {
      plan.items[i * 3].alt = 100 + i + "é";
      leader.publish(plan);
      await leader.flush();
      const ev = await waitEvent(f, isState(2 + i));
      assert.deepEqual(JSON.parse(ev.data), plan);
    }
    // The states went as deltas: the record says so by its size, the channel by "d" messages.
    assert.equal(f.seq, 11);
    const listed = (await fc.list()).find((s) => s.name === name);
    assert.equal(listed.seq, 11);
    assert.equal(listed.followers, 1);
    await leader.stop();
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_ENDED);
    assert.equal(await f.next(100), null);
    assert.equal((await fc.list()).find((s) => s.name === name), undefined);
  } finally {
    await lc.close();
    await fc.close();
  }
});

test("the leader sends deltas (seen on the channel) that the functions apply", async () => {
  const lc = new Client(srv.url, opts);
  const name = uniqueName();
  const { spawn } = await import("node:child_process");
  try {
    const leader = await lc.start(name, "pw", "code");
    // Watch the raw channel with redis-cli: the full state as a header and
    // its body (the request body as sent), then a "d" message.
    const channel = leader.channel;
    const sub = spawn("redis-cli", ["-p", String(srv.redisPort), "SUBSCRIBE", channel]);
    let seen = "";
    sub.stdout.on("data", (d) => { seen += d; });
    const deadline = Date.now() + 10000;
    while (!seen.includes("subscribe") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const big = { text: "x".repeat(2000) };
    leader.publish(big);
    await leader.flush();
    big.text = "x".repeat(1000) + "ü" + "x".repeat(1000);
    leader.publish(big);
    await leader.flush();
    await new Promise((r) => setTimeout(r, 300));
    sub.kill();
    const head = /\ns 1 \d+ ([0-9a-f]{32})\n/.exec(seen);
    assert.ok(head, seen.slice(0, 300));
    assert.ok(seen.includes(`\nr ${head[1]}\n{"text":"xxx`), "the body names the header's publish id");
    assert.match(seen, /\nd 2 1 \d+\n/);
    // The record keeps the first state as its base and the delta in the
    // stream's log; a late joiner gets the newest state assembled from them.
    assert.ok(srv.redis("HGET", `stream:${name}`, "s").startsWith(`r ${head[1]}\n{"text":"xxx`));
    assert.ok(Number(srv.redis("STRLEN", `msl:${name}`)) > 0, "the delta is in the log");
    const fc = new Client(srv.url, opts);
    try {
      const f = await fc.follow(name, "pw");
      await f.waitFor(2, 10000);
      assert.equal(f.latest, JSON.stringify(big));
    } finally {
      await fc.close();
    }
    await leader.stop();
  } finally {
    await lc.close();
  }
});

test("errors carry the header's statuses", async () => {
  const c = new Client(srv.url, opts);
  const name = uniqueName();
  try {
    const leader = await c.start(name, "pw", "code");
    const rejects = async (p, status) => {
      await assert.rejects(p, (e) => e instanceof MissionstreamError && e.status === status && e.message.length > 0);
    };
    await rejects(c.follow(name, "wrong"), Status.MS_ERR_BAD_PASSWORD);
    await rejects(c.follow(uniqueName("none"), "pw"), Status.MS_ERR_NOT_FOUND);
    await rejects(new Client(srv.url, opts).start(name, "pw", "code"), Status.MS_ERR_EXISTS);
    await rejects(c.start(name, "pw", "code"), Status.MS_ERR_ALREADY);
    await rejects(new Client(srv.url, opts).reconnect(name, "pw", "bad"), Status.MS_ERR_BAD_LEADER_CODE);
    await rejects(c.start("", "pw", "code"), Status.MS_ERR_INVALID_ARGUMENT);
    await rejects(c.start("a\u202Eb", "pw", "code"), Status.MS_ERR_INVALID_ARGUMENT);
    await rejects(c.start("n".repeat(257), "pw", "code"), Status.MS_ERR_INVALID_ARGUMENT);
    await rejects(c.start(uniqueName(), "pw", ""), Status.MS_ERR_INVALID_ARGUMENT);
    assert.throws(() => leader.publish("a\u0000b"), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
    assert.throws(() => leader.publish("\uD800"), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
    assert.throws(() => leader.publish(new Uint8Array([0xff])), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
    assert.throws(() => leader.publish("x".repeat(8 * 1024 * 1024 + 1)), (e) => e.status === Status.MS_ERR_TOO_LARGE);
    await rejects(new Client("http://127.0.0.1:1", { ...opts, timeoutMs: 1500 }).list(), Status.MS_ERR_UNAVAILABLE);
    assert.throws(() => new Client("ftp://x"), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
    await leader.stop();
    await rejects(leader.stop(), Status.MS_ERR_NOT_LEADING);
  } finally {
    await c.close();
  }
});

test("a lead taken over ends the old one with MS_ERR_NOT_LEADING; the new one keeps state and seq", async () => {
  const a = new Client(srv.url, opts);
  const b = new Client(srv.url, opts);
  const name = uniqueName();
  try {
    const l1 = await a.start(name, "pw", "code");
    l1.publish({ v: 1 });
    await l1.flush();
    const l2 = await b.reconnect(name, "pw", "code");
    assert.equal(l2.seq, 1);
    l2.publish({ v: 2 });
    await l2.flush();
    l1.publish({ v: 3 });
    await assert.rejects(l1.flush(), (e) => e.status === Status.MS_ERR_NOT_LEADING);
    const failed = await waitEvent(l1, (ev) => ev.kind === EventKind.MS_EVENT_PUBLISH_FAILED);
    assert.equal(failed.status, Status.MS_ERR_NOT_LEADING);
    const stored = srv.redis("HGET", `stream:${name}`, "s");
    assert.equal(JSON.parse(stored.slice(stored.indexOf("\n") + 1)).v, 2);
    await l2.stop();
  } finally {
    await a.close();
    await b.close();
  }
});

test("presence: the leader goes offline when silent and online again; a killed Webdis is recovered from", async () => {
  const own = startServer();
  const lc = new Client(own.url, opts);
  const fc = new Client(own.url, opts);
  const name = uniqueName();
  try {
    const leader = await lc.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    const f = await fc.follow(name, "pw");
    await waitEvent(f, isState(1));
    // The leader's client goes quiet: no heartbeat for 3 intervals.
    clearInterval(leader.hbTimer);
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_LEADER_OFFLINE, 10000);
    leader.publish({ n: 2 });
    await leader.flush();
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_LEADER_ONLINE);
    await waitEvent(f, isState(2));
    leader.hbTimer = setInterval(() => leader.tick(), 100);
    // Webdis is killed and started again on the same port.
    const { readFileSync } = await import("node:fs");
    const { execFileSync, spawn } = await import("node:child_process");
    const pid = Number(readFileSync(`${own.dir}/webdis.pid`, "utf8"));
    process.kill(pid, "SIGKILL");
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_CONNECTION_LOST, 10000);
    const w = spawn("webdis", [`${own.dir}/webdis.json`], { stdio: "ignore", detached: false });
    execFileSync("sh", ["-c", `echo ${w.pid} > ${own.dir}/webdis.pid`]);
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_RECONNECTED, 20000);
    leader.publish({ n: 3 });
    await leader.flush(15000);
    const ev = await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_STATE && e.seq >= 3, 15000);
    assert.deepEqual(JSON.parse(ev.data), { n: 3 });
    await leader.stop();
    await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_ENDED);
  } finally {
    await lc.close();
    await fc.close();
    own.stop();
  }
});

test("wrong passwords in a burst are throttled (MS_ERR_THROTTLED with the wait in the message)", async () => {
  const c = new Client(srv.url, opts);
  const name = uniqueName("throttle");
  try {
    const leader = await c.start(name, "pw", "code");
    // The guesser's key is derived once (the client keeps it), then 8
    // checks go at once: a burst, however loaded the machine.
    const g = new Client(srv.url, opts);
    await assert.rejects(g.follow(name, "wrong"), (e) => e.status === Status.MS_ERR_BAD_PASSWORD);
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => g.follow(name, "wrong")));
    const statuses = results.map((r) => r.reason && r.reason.status);
    assert.ok(statuses.every((s) => s === Status.MS_ERR_BAD_PASSWORD || s === Status.MS_ERR_THROTTLED), JSON.stringify(statuses));
    assert.ok(statuses.includes(Status.MS_ERR_THROTTLED), JSON.stringify(statuses));
    for (const r of results) if (r.reason.status === Status.MS_ERR_THROTTLED) assert.match(r.reason.message, /retry in \d+ ms/);
    await leader.stop();
  } finally {
    await c.close();
  }
});

test("a stream stopped while its follower's Webdis is down ends the follow once Webdis is back", async () => {
  const own = startServer();
  const lc = new Client(own.url, opts);
  const fc = new Client(own.url, opts);
  const name = uniqueName("gone");
  const { readFileSync } = await import("node:fs");
  const { spawn, execFileSync } = await import("node:child_process");
  try {
    const leader = await lc.start(name, "pw", "code");
    const f = await fc.follow(name, "pw");
    await waitEvent(f, isState(0));
    const pid = Number(readFileSync(`${own.dir}/webdis.pid`, "utf8"));
    process.kill(pid, "SIGKILL");
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_CONNECTION_LOST, 10000);
    // Stopped behind the follower's back: straight in Redis, as an expiry would.
    own.redis("DEL", `stream:${name}`);
    const w = spawn("webdis", [`${own.dir}/webdis.json`], { stdio: "ignore" });
    execFileSync("sh", ["-c", `echo ${w.pid} > ${own.dir}/webdis.pid`]);
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_ENDED, 20000);
    assert.equal(f.ended, true);
    clearInterval(leader.hbTimer);
  } finally {
    await lc.close();
    await fc.close();
    own.stop();
  }
});

test("with Webdis down, flush and stop fail within the timeout (no hang); once it is back, stop deletes the stream", async () => {
  const own = startServer();
  const c = new Client(own.url, { ...opts, timeoutMs: 1500 });
  const name = uniqueName("down");
  const { readFileSync } = await import("node:fs");
  const { spawn, execFileSync } = await import("node:child_process");
  try {
    const leader = await c.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    process.kill(Number(readFileSync(`${own.dir}/webdis.pid`, "utf8")), "SIGKILL");
    leader.publish({ n: 2 });
    const t0 = Date.now();
    await assert.rejects(leader.flush(3000), (e) => [Status.MS_ERR_UNAVAILABLE, Status.MS_ERR_TIMEOUT].includes(e.status));
    await assert.rejects(leader.stop(), (e) => [Status.MS_ERR_UNAVAILABLE, Status.MS_ERR_TIMEOUT].includes(e.status));
    assert.ok(Date.now() - t0 < 10000, `failed in ${Date.now() - t0} ms`);
    const failed = await waitEvent(leader, (ev) => ev.kind === EventKind.MS_EVENT_PUBLISH_FAILED);
    assert.ok([Status.MS_ERR_UNAVAILABLE, Status.MS_ERR_TIMEOUT].includes(failed.status));
    const w = spawn("webdis", [`${own.dir}/webdis.json`], { stdio: "ignore" });
    execFileSync("sh", ["-c", `echo ${w.pid} > ${own.dir}/webdis.pid`]);
    const deadline = Date.now() + 10000;
    for (;;) {
      try { await leader.stop(); break; } catch (e) { if (Date.now() > deadline) throw e; await new Promise((r) => setTimeout(r, 200)); }
    }
    assert.equal(own.redis("EXISTS", `stream:${name}`), "0");
  } finally {
    await c.close();
    own.stop();
  }
});

test("a URL with user:password@ sends HTTP basic auth (Webdis' ACL); without it: MS_ERR_FORBIDDEN", async () => {
  const { spawn } = await import("node:child_process");
  const { writeFileSync, readFileSync } = await import("node:fs");
  const net = await import("node:net");
  const port = await new Promise((r) => { const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => r(p)); }); });
  const conf = JSON.parse(readFileSync(`${srv.dir}/webdis.json`, "utf8"));
  Object.assign(conf, {
    http_port: port, logfile: `${srv.dir}/webdis-auth.log`,
    acl: [{ disabled: ["*"] }, { http_basic_auth: "user:pa ss", enabled: ["FCALL", "FCALL_RO", "SUBSCRIBE", "UNSUBSCRIBE", "PING"] }],
  });
  writeFileSync(`${srv.dir}/webdis-auth.json`, JSON.stringify(conf));
  const w = spawn("webdis", [`${srv.dir}/webdis-auth.json`], { stdio: "ignore" });
  const c = new Client(`http://user:pa%20ss@127.0.0.1:${port}`, opts);
  const anon = new Client(`http://127.0.0.1:${port}`, { ...opts, timeoutMs: 2000 });
  const name = uniqueName("auth");
  try {
    const deadline = Date.now() + 10000;
    for (;;) {
      try { await c.list(); break; } catch (e) { if (Date.now() > deadline) throw e; await new Promise((r) => setTimeout(r, 100)); }
    }
    const leader = await c.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    const f = await c.follow(name, "pw");
    await waitEvent(f, isState(1));
    await assert.rejects(anon.follow(name, "pw"), (e) => e.status === Status.MS_ERR_FORBIDDEN);
    await leader.stop();
  } finally {
    await c.close();
    w.kill("SIGKILL");
  }
});

/** A fetch that passes every request on and keeps the answers of ms_snapshot: [{path, reply}]. */
function snapshotSpy() {
  const seen = [];
  const f = async (url, init) => {
    const res = await globalThis.fetch(url, init);
    if (String(url).includes("/FCALL_RO/ms_snapshot/")) {
      const text = await res.clone().text();
      seen.push({ path: decodeURIComponent(new URL(url).pathname), reply: JSON.parse(text).FCALL_RO });
    }
    return res;
  };
  return { fetch: f, seen };
}

const until = async (what, cond, timeoutMs = 10000) => {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
};

test("full states come as two halves paired by publish id in either order; a body under another header, or alone, is never delivered (the snapshot is read, and says 'unchanged'); the end is held like half a state", async () => {
  const lc = new Client(srv.url, opts);
  const spy = snapshotSpy();
  const fc = new Client(srv.url, { ...opts, fetch: spy.fetch });
  const name = uniqueName("halves");
  const events = [];
  try {
    const leader = await lc.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    const f = await fc.follow(name, "pw", { onEvent: (ev) => events.push(ev) });
    await f.waitFor(1, 10000);
    assert.deepEqual(f.json(), { n: 1 });
    // The first snapshot named no state; it answered the state message.
    assert.equal(spy.seen.length, 1);
    assert.match(spy.seen[0].path, new RegExp(`/ms_snapshot/2/stream:[^/]+/msl:[^/]+/${PROTOCOL_VERSION}/[0-9a-f]+/-$`));
    assert.match(spy.seen[0].reply[6], /^r [0-9a-f]{32}\n\{"n":1\}$/);
    const publish = (payload) => srv.redis("PUBLISH", f.channel, payload);
    const id = (n) => `feedfacefeedface${String(n).padStart(16, "0")}`;
    const snapshots = () => spy.seen.length;

    // A body alone: held, then (no header within the hold) the snapshot,
    // which names the state held and answers "" (unchanged).
    let before = snapshots();
    publish(`r ${id(1)}\n{"evil":1}`);
    await until("the snapshot after a lone body", () => snapshots() > before);
    const resync = spy.seen[spy.seen.length - 1];
    assert.ok(resync.path.endsWith(`/1:${f.updatedMs}`), resync.path);
    assert.equal(resync.reply[6], "", "an unchanged state is not sent again");
    assert.ok(resync.reply[5] >= 0 && resync.reply[4] >= 0, "ages");

    // A header with a body of another publish: neither is delivered.
    before = snapshots();
    publish(`s 2 ${Date.now()} ${id(2)}`);
    publish(`r ${id(3)}\n{"evil":2}`);
    await until("the snapshot after unpaired halves", () => snapshots() > before);
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(f.seq, 1);
    assert.deepEqual(f.json(), { n: 1 });

    // Swapped (body first) and in order (header first): both delivered.
    publish(`r ${id(4)}\n{"paired":"swapped"}`);
    publish(`s 2 1700000000002 ${id(4)}`);
    await f.waitFor(2, 10000);
    assert.deepEqual(f.json(), { paired: "swapped" });
    assert.equal(f.updatedMs, 1700000000002);
    publish(`s 3 1700000000003 ${id(5)}`);
    publish(`r ${id(5)}\n{"paired":"in order"}`);
    await f.waitFor(3, 10000);
    assert.deepEqual(f.json(), { paired: "in order" });
    const states = events.filter((ev) => ev.kind === EventKind.MS_EVENT_STATE).map((ev) => [ev.seq, JSON.parse(ev.data)]);
    assert.deepEqual(states, [[1, { n: 1 }], [2, { paired: "swapped" }], [3, { paired: "in order" }]]);
    // The end ahead of the last state's halves (Webdis may swap them):
    // held like half a state, so the state comes first, then the end.
    publish("e");
    publish(`r ${id(6)}\n{"before":"the end"}`);
    publish(`s 4 1700000000004 ${id(6)}`);
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_ENDED);
    const last = events.slice(-2).map((ev) => [ev.kind, ev.seq]);
    assert.deepEqual(last, [[EventKind.MS_EVENT_STATE, 4], [EventKind.MS_EVENT_ENDED, -1]]);
    assert.deepEqual(f.json(), { before: "the end" });
    await leader.stop();
  } finally {
    await lc.close();
    await fc.close();
  }
});

test("presence and ages are on Redis' clock: a follower joining a silent stream gets the state's and the leader's ages at once, offline three intervals after joining", async () => {
  const lc = new Client(srv.url, { ...opts, heartbeatMs: 1000 });
  const fc = new Client(srv.url, opts);
  const name = uniqueName("ages");
  try {
    const leader = await lc.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    clearInterval(leader.hbTimer); // the leader goes silent
    const silentAt = Date.now();
    await new Promise((r) => setTimeout(r, 3500)); // more than 3 intervals
    const listed = (await fc.list()).find((s) => s.name === name);
    assert.ok(listed.nowMs - listed.heardMs >= 3400, JSON.stringify(listed));
    assert.ok(listed.nowMs - listed.updatedMs >= 3400, JSON.stringify(listed));
    assert.ok(listed.nowMs >= listed.heardMs && listed.heardMs >= listed.updatedMs, JSON.stringify(listed));
    const f = await fc.follow(name, "pw");
    const joinedAt = Date.now();
    const first = await waitEvent(f, isState(1));
    assert.ok(first.updatedAgeMs >= 3400, `the state came ${first.updatedAgeMs} ms old`);
    assert.ok(f.updatedAgeMs >= 3400 && f.updatedAgeMs <= Date.now() - silentAt + 1000, String(f.updatedAgeMs));
    assert.ok(f.heardAgeMs >= 3400 && f.heardAgeMs <= Date.now() - silentAt + 1000, String(f.heardAgeMs));
    // Nothing is reported at join: offline three intervals after it.
    assert.equal(f.leaderOnline, true);
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_LEADER_OFFLINE, 10000);
    assert.ok(Date.now() - joinedAt >= 2900, `offline ${Date.now() - joinedAt} ms after joining`);
    assert.equal(f.leaderOnline, false);
    // A state: online again, and fresh.
    leader.publish({ n: 2 });
    await leader.flush();
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_LEADER_ONLINE);
    const second = await waitEvent(f, isState(2));
    assert.equal(second.updatedAgeMs, 0);
    assert.ok(f.updatedAgeMs < 1500 && f.heardAgeMs < 1500, `${f.updatedAgeMs} ${f.heardAgeMs}`);
    const again = (await fc.list()).find((s) => s.name === name);
    assert.ok(again.nowMs - again.updatedMs < 1500 && again.nowMs - again.heardMs < 1500, JSON.stringify(again));
    await leader.stop();
  } finally {
    await lc.close();
    await fc.close();
  }
});

test("heartbeats sent while a follower had no subscription count when it is back: the snapshot's heard age makes the leader online before the reconnection is reported", async () => {
  const { spawn } = await import("node:child_process");
  const { writeFileSync, readFileSync } = await import("node:fs");
  const net = await import("node:net");
  const own = startServer();
  // A second Webdis on the same Redis: the follower's, killed and started again.
  const port = await new Promise((r) => { const sv = net.createServer().listen(0, "127.0.0.1", () => { const p = sv.address().port; sv.close(() => r(p)); }); });
  const conf = JSON.parse(readFileSync(`${own.dir}/webdis.json`, "utf8"));
  Object.assign(conf, { http_port: port, logfile: `${own.dir}/webdis-b.log` });
  writeFileSync(`${own.dir}/webdis-b.json`, JSON.stringify(conf));
  let w = spawn("webdis", [`${own.dir}/webdis-b.json`], { stdio: "ignore" });
  const lc = new Client(own.url, opts);
  const fc = new Client(`http://127.0.0.1:${port}`, opts);
  const name = uniqueName("away");
  const events = [];
  let ticking = true;
  try {
    const deadline = Date.now() + 10000;
    for (;;) {
      try { await fc.list(); break; } catch (e) { if (Date.now() > deadline) throw e; await new Promise((r) => setTimeout(r, 100)); }
    }
    const leader = await lc.start(name, "pw", "code");
    leader.publish({ n: 1 });
    await leader.flush();
    const f = await fc.follow(name, "pw", { onEvent: (ev) => events.push(ev.kindName) });
    await f.waitFor(1, 10000);
    clearInterval(leader.hbTimer); // silent: offline
    await until("offline", () => events.includes("MS_EVENT_LEADER_OFFLINE"));
    w.kill("SIGKILL");
    await until("the subscription lost", () => events.includes("MS_EVENT_CONNECTION_LOST"));
    const lostAt = events.length;
    // The leader's heartbeats go on while the follower has no subscription.
    const heartbeats = (async () => {
      while (ticking) {
        leader.lastSent = 0;
        await leader.tick();
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    w = spawn("webdis", [`${own.dir}/webdis-b.json`], { stdio: "ignore" });
    await until("reconnected", () => events.includes("MS_EVENT_RECONNECTED"), 20000);
    ticking = false;
    await heartbeats;
    const after = events.slice(lostAt);
    const online = after.indexOf("MS_EVENT_LEADER_ONLINE");
    assert.ok(online >= 0 && online < after.indexOf("MS_EVENT_RECONNECTED"), after.join(","));
    assert.equal(f.leaderOnline, true);
    assert.ok(f.heardAgeMs < 1500, String(f.heardAgeMs));
    await leader.stop();
    await until("ended", () => events.includes("MS_EVENT_ENDED"));
  } finally {
    ticking = false;
    w.kill("SIGKILL");
    await lc.close();
    await fc.close();
    own.stop();
  }
});

test("six followers through 200 updates, full states and deltas mixed: each delivers only published states, in order, and ends on the last", async () => {
  const lc = new Client(srv.url, opts);
  const fcs = Array.from({ length: 6 }, () => new Client(srv.url, opts));
  const name = uniqueName("many");
  const published = new Map();
  try {
    const leader = await lc.start(name, "pw", "code");
    const seen = fcs.map(() => []);
    const followers = await Promise.all(fcs.map((c, k) => c.follow(name, "pw", {
      onEvent: (ev) => { if (ev.kind === EventKind.MS_EVENT_STATE) seen[k].push([ev.seq, ev.data]); },
    })));
    await Promise.all(followers.map((f) => f.waitFor(0, 10000)));
    const big = { text: "x".repeat(3000), n: 0 };
    for (let i = 1; i <= 200; i++) {
      // Every third state is small (sent in full), the others large
      // (a delta when the previous one was large too).
      big.n = i;
      const state = i % 3 === 0 ? JSON.stringify({ small: i }) : JSON.stringify(big);
      leader.publish(state);
      await leader.flush();
      assert.equal(leader.seq, i);
      published.set(i, state);
    }
    await Promise.all(followers.map((f) => f.waitFor(200, 20000)));
    seen.forEach((states, k) => {
      for (let j = 0; j < states.length; j++) {
        const [seq, data] = states[j];
        if (j > 0) assert.ok(seq > states[j - 1][0], `follower ${k}: seq ${seq} after ${states[j - 1][0]}`);
        if (seq > 0) assert.equal(data, published.get(seq), `follower ${k}: the state of seq ${seq} is the one published`);
      }
      assert.equal(states[states.length - 1][0], 200);
      assert.ok(states.length > 150, `follower ${k} got ${states.length} states`);
    });
    await leader.stop();
  } finally {
    await lc.close();
    await Promise.all(fcs.map((c) => c.close()));
  }
});
