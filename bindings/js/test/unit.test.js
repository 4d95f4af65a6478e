// The test vectors of docs/PROTOCOL.md, with no server.
import test from "node:test";
import assert from "node:assert/strict";
import { applyDelta, makeDelta, checksum, deriveKey, channelOf, openSealed, frameBody, Status, statusName, EventKind, sealLead, channelTag } from "../src/index.js";
import { parseMessage, parseStateMessage, parseConnectReply, probeVerdict, StateHalves, HOLD_MS, MAX_HELD_BODIES } from "../src/messages.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

test("key derivation matches the test vectors", async () => {
  const salt = "000102030405060708090a0b0c0d0e0f";
  assert.equal(await deriveKey("correct horse", "pw:", salt, 100000), "2e31d2dac861c0bc6459dd01f8116f6472f1c13ce752f8707851be9b9559a4fa");
  assert.equal(await deriveKey("c0de-é", "code:", salt, 100000), "8a352da446eba79955cf2c6aef18cce9404b5b8ded62fda274da779b38980f1a");
  assert.equal(await deriveKey("", "pw:", salt, 100000), "07f6a0ab6bd68f107233b344249f10f9b8206722d91988e3bfd827718a41a765");
});

test("channel and sealed value match the test vectors", async () => {
  assert.equal(await channelOf("000102030405060708090a0b0c0d0e0f", "m1"), "bdb9e7ae4e18af698d45214028be66ed5998a4f1");
  const key = "2e31d2dac861c0bc6459dd01f8116f6472f1c13ce752f8707851be9b9559a4fa";
  assert.equal(await openSealed("9ae98dd1a4b18439abe9c51f396e1287336f625d", key, "5f3a0c1e9b7d22a40"), "bdb9e7ae4e18af698d45214028be66ed5998a4f1");
  assert.equal(await openSealed("not hex", key, "n"), null);
});

test("the lead seal and the channel tag match the test vectors", async () => {
  const token = "00112233445566778899aabbccddeeff";
  const leadHash = [...new Uint8Array(await crypto.subtle.digest("SHA-1", enc.encode(token)))].map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(leadHash, "2ab31b2b0c25d5f6cbc9e082f80ab7cd27ec6315");
  const id = "0123456789abcdef0000000000000001";
  const body = enc.encode(`r ${id}\n{}`);
  assert.equal(body.length, 37);
  assert.equal(await sealLead(token, leadHash, id, "full", "-", "-", 0, body.length), "ef2a09f947b69ffd6b91a5ba2d66c2f9");
  assert.equal(await sealLead(token, leadHash, id, "delta", "41", "0123456789abcdef0000000000000000", 0, 53), "4a46671bdf2df13d466b287b3a751bb4");
  // Sealing is an XOR with the mask: the mask of the full vector is documented too.
  const mask = "ef3b2bca03e3f98ae3080f01e1bb2c06d521095f";
  let xor = "";
  for (let i = 0; i < 32; i++) xor += (parseInt(token[i], 16) ^ parseInt(mask[i], 16)).toString(16);
  assert.equal(xor, "ef2a09f947b69ffd6b91a5ba2d66c2f9");
  // Another body length, floor or kind seals differently.
  assert.notEqual(await sealLead(token, leadHash, id, "full", "-", "-", 0, 38), "ef2a09f947b69ffd6b91a5ba2d66c2f9");
  assert.notEqual(await sealLead(token, leadHash, id, "full", "-", "-", 1, 37), "ef2a09f947b69ffd6b91a5ba2d66c2f9");
  await assert.rejects(sealLead("not a token", leadHash, id, "full", "-", "-", 0, 37), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
  assert.equal(await channelTag("0f".repeat(20)), "d5d24c8a08653d96");
});

test("channel messages: the s header, the r body, d, h, p, e; anything else is ignored", () => {
  const id = "0123456789abcdef0000000000000001";
  assert.deepEqual(parseMessage(`s 12 1700000000123 ${id}`), { type: "s", seq: 12, updatedMs: 1700000000123, id });
  assert.deepEqual(parseMessage(`r ${id}\n{"a":"h 100\n"}`), { type: "r", id, state: '{"a":"h 100\n"}' });
  assert.deepEqual(parseMessage(`r ${id}\n`), { type: "r", id, state: "" });
  assert.deepEqual(parseMessage("d 3 2 1700000000123\nH\n6@0,6:there 5@6,OPwXW;"), { type: "d", seq: 3, base: 2, updatedMs: 1700000000123, delta: "H\n6@0,6:there 5@6,OPwXW;" });
  assert.deepEqual(parseMessage("h 500"), { type: "h", interval: 500 });
  assert.deepEqual(parseMessage("p abc"), { type: "p", token: "abc" });
  assert.deepEqual(parseMessage("e"), { type: "e" });
  for (const bad of [
    `s 12 1700000000123 ${id}\n{}`, // protocol 8's s message: a header has no newline
    `s 12 1700000000123`, `s 12 1700000000123 ${id} x`, `s x 1 ${id}`, `s -1 1 ${id}`, `s 1 1 ${id.toUpperCase()}`, `s 1 1 ${id.slice(1)}`, `s  1 1 ${id}`,
    `r ${id}`, `r -\n{}`, `r ${id.slice(2)}\n{}`, `r  ${id}\n{}`, `r${id}\n{}`,
    "d 3 2\nx", "d 3 x 1\nx", "d 3 2 1", "", "x", "ee", null, 5,
  ]) {
    assert.equal(parseMessage(bad), null, String(bad));
  }
  // Snapshots carry the same state message; the initial state names no publish.
  assert.deepEqual(parseStateMessage("r -\n{}", true), { id: "-", state: "{}" });
  assert.equal(parseStateMessage("r -\n{}"), null);
  assert.equal(parseStateMessage("{}", true), null);
});

test("state halves pair by publish id in either order; a body is never paired with another publish's header", () => {
  const a = "0123456789abcdef0000000000000001";
  const b = "0123456789abcdef0000000000000002";
  const head = (seq, id) => parseMessage(`s ${seq} ${1000 + seq} ${id}`);
  const body = (id, state) => parseMessage(`r ${id}\n${state}`);
  // In order: header then body.
  let h = new StateHalves();
  assert.equal(h.head(head(1, a), 0), null);
  assert.deepEqual(h.body(body(a, "A"), 1), { seq: 1, updatedMs: 1001, id: a, state: "A" });
  assert.equal(h.size, 0);
  // Swapped: body then header.
  h = new StateHalves();
  assert.equal(h.body(body(a, "A"), 0), null);
  assert.deepEqual(h.head(head(1, a), 1), { seq: 1, updatedMs: 1001, id: a, state: "A" });
  assert.equal(h.size, 0);
  // Two publishes interleaved: each body goes with its own header.
  h = new StateHalves();
  assert.equal(h.head(head(1, a), 0), null);
  assert.equal(h.body(body(b, "B"), 0), null, "the body of b is not delivered under a's header");
  assert.equal(h.head(head(2, b), 0).state, "B");
  assert.deepEqual(h.body(body(a, "A"), 0), { seq: 1, updatedMs: 1001, id: a, state: "A" });
  // A header whose body never comes, and a body whose header never comes:
  // held, then stale after HOLD_MS (the follower reads the snapshot).
  h = new StateHalves();
  h.head(head(5, a), 100);
  assert.equal(h.stale(100 + HOLD_MS - 1), false);
  assert.equal(h.stale(100 + HOLD_MS), true);
  assert.ok(h.holds(a));
  h.settle(5); // a state of seq 5 or newer was delivered: the header needs no body
  assert.equal(h.holds(a), false);
  assert.equal(h.stale(100000), false);
  h.body(body(b, "B"), 200);
  assert.equal(h.stale(200 + HOLD_MS), true);
  h.drop(b);
  assert.equal(h.size, 0);
  // At most MAX_HELD_BODIES bodies wait.
  h = new StateHalves();
  for (let i = 0; i <= MAX_HELD_BODIES; i++) {
    assert.equal(h.overfull(), false);
    h.body(body(`0123456789abcdef${String(i).padStart(16, "0")}`, "x"), 0);
  }
  assert.equal(h.overfull(), true);
  h.clear();
  assert.equal(h.size, 0);
});

test("the documented delta applies; corrupt ones are refused", () => {
  const base = enc.encode("hello world");
  const out = applyDelta(base, enc.encode("H\n6@0,6:there 5@6,OPwXW;"));
  assert.equal(dec.decode(out), "hello there world");
  assert.equal(checksum(enc.encode("hello there world")), 0x1867b860);
  for (const bad of ["H\n6@0,6:there 5@6,OPwXX;", "H\n6@0,6:there 5@7,OPwXW;", "H\n6@0,6:there 5@6,OPwXW;x", "I\n6@0,6:there 5@6,OPwXW;", "H\n6@0,6:there 5@6,", "", "H6@0,"]) {
    assert.equal(applyDelta(base, enc.encode(bad)), null, bad);
  }
});

test("made deltas round-trip and keep whole characters", () => {
  const cases = [
    ["", "abc"], ["abc", ""], ["same", "same"], ["héllo wörld", "héllo wórld"], ["aé", "aè"],
    ["{\"wp\":[1,2,3]}", "{\"wp\":[1,2,4,3]}"], ["😀😀", "😀😁"], ["x".repeat(1000), "x".repeat(500) + "ü" + "x".repeat(500)],
  ];
  for (const [a, b] of cases) {
    const d = makeDelta(enc.encode(a), enc.encode(b));
    const text = new TextDecoder("utf-8", { fatal: true }).decode(d); // valid UTF-8 itself
    assert.ok(text.length > 0);
    assert.equal(dec.decode(applyDelta(enc.encode(a), d)), b, `${a} -> ${b}`);
  }
});

test("framed bodies count bytes", () => {
  assert.equal(dec.decode(frameBody(["ab", "é", "{}"])), "2 2\nabé{}");
  assert.equal(dec.decode(frameBody(["x"])), "\nx");
});

test("statuses and event kinds have the header's names and values", async () => {
  const { readFileSync } = await import("node:fs");
  const header = readFileSync(new URL("../../../include/missionstream.h", import.meta.url), "utf8");
  const found = [...header.matchAll(/^\s+(MS_(?:OK|ERR_[A-Z_]+|EVENT_[A-Z_]+)) = (\d+),/gm)];
  assert.ok(found.length >= 20);
  for (const [, name, value] of found) {
    const table = name.startsWith("MS_EVENT_") ? EventKind : Status;
    assert.equal(table[name], Number(value), name);
  }
  assert.equal(Object.keys(Status).length + Object.keys(EventKind).length, found.length);
  assert.equal(statusName(3), "MS_ERR_NOT_FOUND");
});

test("the package speaks the protocol version of the library and the functions", async () => {
  const { readFileSync } = await import("node:fs");
  const { PROTOCOL_VERSION } = await import("../src/index.js");
  const rust = /PROTOCOL_VERSION: &str = "(\d+)"/.exec(readFileSync(new URL("../../../src/wire/protocol.rs", import.meta.url), "utf8"))[1];
  const lua = /^local PROTOCOL = '(\d+)'/m.exec(readFileSync(new URL("../../../lua/missionstream.lua", import.meta.url), "utf8"))[1];
  const readme = /protocol \(version (\d+)\)|protocol of `docs\/PROTOCOL.md` \(version (\d+)\)/.exec(readFileSync(new URL("../README.md", import.meta.url), "utf8"));
  assert.equal(PROTOCOL_VERSION, rust);
  assert.equal(PROTOCOL_VERSION, lua);
  assert.equal(readme[1] ?? readme[2], rust);
  const dts = /export const PROTOCOL_VERSION: "(\d+)"/.exec(readFileSync(new URL("../index.d.ts", import.meta.url), "utf8"));
  assert.equal(dts && dts[1], rust, "index.d.ts declares the version");
});

test("index.d.ts declares every export of the package, and nothing it lacks", async () => {
  const { readFileSync } = await import("node:fs");
  const mod = await import("../src/index.js");
  const dts = readFileSync(new URL("../index.d.ts", import.meta.url), "utf8");
  const declared = new Set([...dts.matchAll(/^export (?:declare )?(?:const|function|class) (\w+)/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].sort(), Object.keys(mod).sort());
});

test("endpoint lists: a comma-separated string or an array; empty, malformed or repeated entries are refused naming them", async () => {
  const { Client, rendezvous } = await import("../src/index.js");
  const c = new Client("http://a:1, https://u:p@b/prefix ,http://127.0.0.1:3/x/");
  assert.deepEqual(c.endpoints.map((e) => e.base), ["http://a:1", "https://b/prefix", "http://127.0.0.1:3/x"]);
  assert.equal(c.endpoints[1].headers.Authorization, "Basic " + btoa("u:p"));
  assert.equal(c.base, "http://a:1");
  assert.equal(new Client(["http://a:1", "http://b:2"]).endpoints.length, 2);
  for (const [bad, says] of [
    ["", "empty"], ["http://a:1,", "entry 2"], ["http://a:1,,http://b:2", "entry 2"], ["http://a:1,ftp://b", "entry 2"],
    ["http://a:1,http://A:1", "repeats entry 1"], ["http://a:80,http://a", "repeats entry 1"], ["http://a/x,http://b,http://a/x/", "entry 3"],
  ]) {
    assert.throws(() => new Client(bad), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT && e.message.includes(says), bad);
  }
  assert.throws(() => new Client(["http://a:1", 5]), (e) => e.status === Status.MS_ERR_INVALID_ARGUMENT);
  // Followers, when replicas carry the channel: replicas by rendezvous
  // hash (stable, spread), the primary last, failed nodes after it.
  const e = new Client("http://a:1,http://b:2,http://c:3");
  const firsts = [0, 0, 0];
  for (let i = 0; i < 300; i++) {
    const order = e.followOrder(`stream:s-${i}`, true);
    assert.equal(order[2], 0, "the primary last");
    assert.deepEqual(order, e.followOrder(`stream:s-${i}`, true));
    firsts[order[0]] += 1;
    // When only the primary carries it: the primary first, then the
    // replicas in the same hash order.
    assert.deepEqual(e.followOrder(`stream:s-${i}`, false), [0, ...order.slice(0, 2)]);
  }
  assert.ok(firsts[1] > 100 && firsts[2] > 100, String(firsts));
  e.tookWrite(2);
  assert.equal(e.moves, 1);
  assert.equal(e.followOrder("x", true)[2], 2);
  assert.equal(e.followOrder("x", false)[0], 2);
  const first = e.followOrder("x", true)[0];
  e.failed(first);
  const other = first === 0 ? 1 : 0; // the other replica (node 2 is the primary now)
  assert.deepEqual(e.followOrder("x", true), [other, 2, first]);
  assert.deepEqual(e.followOrder("x", false), [2, other, first]);
  e.failed(2);
  assert.deepEqual(e.followOrder("x", false), [other, 2, first], "a primary that failed lately after the nodes that did not");
  e.tookWrite(2);
  assert.equal(e.moves, 1);
  // The hash of docs/PROTOCOL.md: 64-bit, deterministic, key and endpoint both count.
  assert.equal(typeof rendezvous("stream:x", "http://a:1"), "bigint");
  assert.notEqual(rendezvous("stream:x", "http://a:1"), rendezvous("stream:y", "http://a:1"));
  assert.notEqual(rendezvous("stream:x", "http://a:1"), rendezvous("stream:x", "http://b:1"));
});

test("two far apart edits of a large plan give a delta about their size (copies inside the middle), byte-exact", async () => {
  const { surveyPlan } = await import("./plan.js");
  const plan = surveyPlan(200);
  const base = enc.encode(JSON.stringify(plan, null, 4));
  const wps = plan.mission.items.filter((it) => it.command === 16);
  wps[2].params[4] += 0.0001;
  wps[wps.length - 3].Altitude = 77;
  plan.mission.items[0].Altitude = "hé😀"; // a multibyte edit too
  const target = enc.encode(JSON.stringify(plan, null, 4));
  assert.ok(base.length > 50000);
  const d = makeDelta(base, target);
  new TextDecoder("utf-8", { fatal: true }).decode(d);
  assert.deepEqual(applyDelta(base, d), target);
  assert.ok(d.length < 400, `a ${d.length}-byte delta for three small edits of a ${base.length}-byte plan`);
  // Random edits of multibyte text, anywhere: always byte-exact and valid UTF-8.
  let seed = 12345;
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const alphabet = ["a", "b", "é", "😀", "{", "\"", "ü", "x", "\n"];
  for (let round = 0; round < 200; round++) {
    let a = "";
    const len = 200 + rnd(3000);
    for (let i = 0; i < len; i++) a += rnd(4) === 0 ? alphabet[rnd(alphabet.length)] : String.fromCharCode(97 + rnd(3));
    const chars = [...a];
    for (let e = rnd(6); e >= 0; e--) {
      const at = rnd(chars.length + 1);
      const kind = rnd(3);
      if (kind === 0) chars.splice(at, 0, ...[...alphabet[rnd(alphabet.length)].repeat(1 + rnd(40))]);
      else if (kind === 1) chars.splice(at, 1 + rnd(30));
      else chars.splice(at, 1, alphabet[rnd(alphabet.length)]);
    }
    const b = chars.join("");
    const dd = makeDelta(enc.encode(a), enc.encode(b));
    new TextDecoder("utf-8", { fatal: true }).decode(dd);
    assert.equal(dec.decode(applyDelta(enc.encode(a), dd)), b, `round ${round}`);
  }
});

test("ms_connect's reply: the sealed channel, the heartbeat and where the channel is carried (0 or 1, nothing else)", () => {
  assert.deepEqual(parseConnectReply(["c2VhbGVk", 5000, 0]), { sealed: "c2VhbGVk", hbMs: 5000, onReplicas: false });
  assert.deepEqual(parseConnectReply(["s", "200", "1"]), { sealed: "s", hbMs: 200, onReplicas: true });
  for (const bad of [
    ["s", 5000], // protocol 9's reply
    ["s", 5000, 2], ["s", 5000, -1], ["s", 5000, "yes"], ["s", 5000, true], ["s", 5000, null], ["s", 5000, ""],
    ["s", 5000, 1, 0], ["s", "x", 1], ["s", -5, 1], [1, 5000, 1], null, "s", {},
  ]) {
    assert.equal(parseConnectReply(bad), null, JSON.stringify(bad));
  }
});

test("a probe answered by another node than the one subscribed on: the echo decides when replicas carry the channel, the attempt moves at once when only the primary does", () => {
  // Answered by the node subscribed on (the primary).
  assert.equal(probeVerdict({ node: 1, subscribed: 1, receivers: 0, onReplicas: false }), "gone");
  assert.equal(probeVerdict({ node: 1, subscribed: 1, receivers: 0, onReplicas: true }), "gone");
  for (const onReplicas of [false, true]) {
    assert.equal(probeVerdict({ node: 1, subscribed: 1, receivers: 2, onReplicas }), "echo");
  }
  // Subscribed on a replica.
  for (const receivers of [0, 1, 7]) {
    assert.equal(probeVerdict({ node: 0, subscribed: 2, receivers, onReplicas: true }), "echo");
    assert.equal(probeVerdict({ node: 0, subscribed: 2, receivers, onReplicas: false }), "elsewhere");
  }
});
