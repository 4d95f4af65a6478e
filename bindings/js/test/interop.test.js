// The JS client against the Rust library (through the Python binding over
// target/release/libmissionstream.so), both ways, on real Redis + Webdis.
import test, { before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { Client, EventKind } from "../src/index.js";
import { startServer, uniqueName, waitEvent, python } from "./helpers.js";
import { surveyPlan, dragWaypoint } from "./plan.js";

let srv;
before(() => { srv = startServer(); });
after(() => srv && srv.stop());

// A line-oriented peer: the library leading or following, driven by stdin/stdout.
const PEER = `
import json, sys
import missionstream as ms
url, role, name = sys.argv[1:4]
c = ms.Client(url, timeout=10, heartbeat=0.5)
out = lambda **kw: (print(json.dumps(kw), flush=True))
if role == "lead":
    leader = c.start(name, "pw", "code")
    out(ready=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd is None:
            leader.stop(); out(stopped=True); break
        leader.publish(cmd); leader.flush(); out(stored=True)
else:
    f = c.connect(name, "pw")
    out(ready=True)
    for ev in f.events(timeout=30):
        out(kind=int(ev.kind), seq=ev.seq, data=ev.data)
        if ev.kind == ms.EventKind.ENDED:
            break
c.close()
`;

function peer(role, name) {
  const p = python(PEER, [srv.url, role, name]);
  let err = "";
  p.stderr.on("data", (d) => { err += d; });
  const lines = createInterface({ input: p.stdout })[Symbol.asyncIterator]();
  return {
    p,
    async line(timeoutMs = 20000) {
      let t;
      const r = await Promise.race([lines.next(), new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`peer silent; stderr: ${err}`)), timeoutMs); })]);
      clearTimeout(t);
      if (r.done) throw new Error(`peer exited; stderr: ${err}`);
      return JSON.parse(r.value);
    },
    send(s) { p.stdin.write(JSON.stringify(s) + "\n"); },
    get stderr() { return err; },
  };
}

function watchChannel(channel) {
  const sub = spawn("redis-cli", ["-p", String(srv.redisPort), "SUBSCRIBE", channel]);
  const st = { text: "", stop: () => sub.kill() };
  sub.stdout.on("data", (d) => { st.text += d; });
  return st;
}

test("library leader -> JS follower: a survey plan edited waypoint by waypoint, deltas applied byte-exact", async () => {
  const name = uniqueName("interop-lib-lead");
  const lead = peer("lead", name);
  const c = new Client(srv.url, { timeoutMs: 10000 });
  try {
    assert.deepEqual(await lead.line(), { ready: true });
    const f = await c.follow(name, "pw");
    await waitEvent(f, (ev) => ev.kind === EventKind.MS_EVENT_STATE && ev.seq === 0);
    const plan = surveyPlan(200);
    const texts = [];
    let raw = null;
    for (let i = 0; i < 30; i++) {
      const text = JSON.stringify(dragWaypoint(plan, i), null, 4);
      texts.push(text);
      lead.send(text);
      assert.deepEqual(await lead.line(), { stored: true });
      const ev = await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_STATE && e.seq === i + 1);
      assert.equal(ev.data, text, `state ${i + 1} byte for byte`);
      if (i === 0) raw = watchChannel(f.channel); // later states: watch the wire
    }
    await new Promise((r) => setTimeout(r, 200));
    raw.stop();
    const deltas = (raw.text.match(/\nd \d+ \d+ \d+\n/g) || []).length;
    assert.ok(deltas >= 20, `the library sent its updates as deltas (${deltas} seen)`);
    // Small states go in full: a header and the body, paired by publish id.
    const full = watchChannel(f.channel);
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 5; i++) {
      const text = JSON.stringify({ small: i, é: "😀" });
      lead.send(text);
      assert.deepEqual(await lead.line(), { stored: true });
      const ev = await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_STATE && e.seq === 31 + i);
      assert.equal(ev.data, text, `full state ${31 + i} byte for byte`);
    }
    await new Promise((r) => setTimeout(r, 200));
    full.stop();
    const heads = [...full.text.matchAll(/\ns (\d+) \d+ ([0-9a-f]{32})\n/g)];
    assert.deepEqual(heads.map((m) => Number(m[1])), [31, 32, 33, 34, 35]);
    for (const [, , id] of heads) assert.ok(full.text.includes(`\nr ${id}\n{"small":`), `the body of ${id}`);
    lead.send(null);
    assert.deepEqual(await lead.line(), { stopped: true });
    await waitEvent(f, (e) => e.kind === EventKind.MS_EVENT_ENDED);
  } finally {
    lead.p.kill();
    await c.close();
  }
});

test("JS leader -> library follower: every state arrives byte-exact, deltas included, then the end", async () => {
  const name = uniqueName("interop-js-lead");
  const c = new Client(srv.url, { timeoutMs: 10000, heartbeatMs: 500 });
  try {
    const leader = await c.start(name, "pw", "code");
    const plan = surveyPlan(200);
    leader.publish(JSON.stringify(plan, null, 4));
    await leader.flush();
    const fol = peer("follow", name);
    assert.deepEqual(await fol.line(), { ready: true });
    const first = await fol.line();
    assert.equal(first.kind, EventKind.MS_EVENT_STATE);
    assert.equal(first.seq, 1);
    const raw = watchChannel(leader.channel);
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 0; i < 30; i++) {
      const text = JSON.stringify(dragWaypoint(plan, i), null, 4);
      leader.publish(text);
      await leader.flush();
      let ev;
      do { ev = await fol.line(); } while (ev.kind !== EventKind.MS_EVENT_STATE);
      assert.equal(ev.seq, i + 2);
      assert.equal(ev.data, text, `state ${i + 2} byte for byte`);
    }
    // Two far apart waypoints moved at once: the delta copies the plan
    // between them from the base (the functions and the library apply it).
    const wps = plan.mission.items.filter((it) => it.command === 16);
    for (let j = 0; j < 6; j++) {
      for (const wp of [wps[j * 3], wps[wps.length - 1 - j * 3]]) {
        wp.params[4] += 0.00011;
        wp.Altitude += 1;
        wp.params[6] = wp.Altitude;
      }
      const text = JSON.stringify(plan, null, 4);
      leader.publish(text);
      await leader.flush();
      let ev;
      do { ev = await fol.line(); } while (ev.kind !== EventKind.MS_EVENT_STATE);
      assert.equal(ev.seq, 32 + j);
      assert.equal(ev.data, text, `state ${32 + j} (two far apart edits) byte for byte`);
    }
    // Small states go in full: a header and the body, paired by publish id.
    for (let i = 0; i < 5; i++) {
      const text = JSON.stringify({ small: i, é: "😀" });
      leader.publish(text);
      await leader.flush();
      let ev;
      do { ev = await fol.line(); } while (ev.kind !== EventKind.MS_EVENT_STATE);
      assert.equal(ev.seq, 38 + i);
      assert.equal(ev.data, text, `full state ${38 + i} byte for byte`);
    }
    await new Promise((r) => setTimeout(r, 200));
    raw.stop();
    const deltas = (raw.text.match(/\nd \d+ \d+ \d+\n/g) || []).length;
    assert.ok(deltas >= 31, `the JS leader sent deltas (${deltas} seen)`);
    const heads = [...raw.text.matchAll(/\ns (\d+) \d+ ([0-9a-f]{32})\n/g)];
    assert.deepEqual(heads.map((m) => Number(m[1])), [38, 39, 40, 41, 42]);
    for (const [, , id] of heads) assert.ok(raw.text.includes(`\nr ${id}\n{"small":`), `the body of ${id}`);
    await leader.stop();
    let ev;
    do { ev = await fol.line(); } while (ev.kind !== EventKind.MS_EVENT_ENDED);
    fol.p.kill();
  } finally {
    await c.close();
  }
});
