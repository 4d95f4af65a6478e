// Channel messages (docs/PROTOCOL.md, "Channel messages") and the pairing
// of a full state's two halves: its header `s <seq> <updated_ms> <publish
// id>` and its body `r <publish id>\n<state>`. The functions publish the
// header, then the body, in one call; Webdis may swap adjacent messages,
// so a follower pairs them by publish id, in either order. Pure: no
// network, no timers (the follower owns those).

const ID = /^[0-9a-f]{32}$/;
const DIGITS = /^(0|[1-9][0-9]{0,15})$/;

/** How long an unpaired half (or a delta without its base) waits before the follower reads the snapshot, ms. */
export const HOLD_MS = 250;
/** Bodies held unpaired at most (each up to 8 MiB); one more and the follower reads the snapshot. */
export const MAX_HELD_BODIES = 2;
/** Headers held unpaired at most. */
export const MAX_HELD_HEADS = 64;

const num = (s) => (DIGITS.test(s) ? Number(s) : NaN);

/**
 * A state message, `r <publish id>\n<state>`, as the channel's `r` message
 * and `ms_snapshot` carry it: {id, state}, or null when it is not one.
 * `allowDash`: the id may be `-` (the initial state of a stream, in
 * snapshots only).
 */
export function parseStateMessage(p, allowDash = false) {
  if (typeof p !== "string" || p.length < 3 || p[0] !== "r" || p[1] !== " ") return null;
  const nl = p.indexOf("\n");
  if (nl < 0) return null;
  const id = p.slice(2, nl);
  if (!ID.test(id) && !(allowDash && id === "-")) return null;
  return { id, state: p.slice(nl + 1) };
}

/**
 * One channel message payload, parsed: {type: "s", seq, updatedMs, id}
 * (a header), {type: "r", id, state} (a body), {type: "d", seq, base,
 * updatedMs, delta}, {type: "h", interval}, {type: "p", token},
 * {type: "e"}; null for anything else (ignored by followers).
 */
export function parseMessage(p) {
  if (typeof p !== "string" || !p) return null;
  const t = p[0];
  if (t === "s") {
    // A header: exactly four words, no newline.
    if (p.includes("\n")) return null;
    const w = p.split(" ");
    if (w.length !== 4 || w[0] !== "s" || !ID.test(w[3])) return null;
    const seq = num(w[1]);
    const updatedMs = num(w[2]);
    if (Number.isNaN(seq) || Number.isNaN(updatedMs)) return null;
    return { type: "s", seq, updatedMs, id: w[3] };
  }
  if (t === "r") {
    const b = parseStateMessage(p);
    return b && { type: "r", id: b.id, state: b.state };
  }
  if (t === "d") {
    const nl = p.indexOf("\n");
    if (nl < 0) return null;
    const head = p.slice(0, nl).split(" ");
    if (head.length !== 4 || head[0] !== "d") return null;
    const seq = num(head[1]);
    const base = num(head[2]);
    const updatedMs = num(head[3]);
    if (Number.isNaN(seq) || Number.isNaN(base) || Number.isNaN(updatedMs)) return null;
    return { type: "d", seq, base, updatedMs, delta: p.slice(nl + 1) };
  }
  if (t === "h" && p[1] === " ") return { type: "h", interval: Number(p.slice(2)) };
  if (t === "p" && p[1] === " ") return { type: "p", token: p.slice(2) };
  if (p === "e") return { type: "e" };
  return null;
}

/**
 * The halves of full states waiting for their other half, by publish id.
 * `head(m, at)` / `body(m, at)` take a parsed `s` / `r` message and return
 * the pair {seq, updatedMs, id, state} once both halves of a publish are
 * in, else null (the half is held). A body is only ever paired with the
 * header naming its own publish id.
 */
export class StateHalves {
  constructor() {
    this.heads = new Map(); // id -> {seq, updatedMs, id, at}
    this.bodies = new Map(); // id -> {id, state, at}
  }

  head(m, at) {
    const b = this.bodies.get(m.id);
    if (b) {
      this.bodies.delete(m.id);
      this.heads.delete(m.id);
      return { seq: m.seq, updatedMs: m.updatedMs, id: m.id, state: b.state };
    }
    this.heads.set(m.id, { seq: m.seq, updatedMs: m.updatedMs, id: m.id, at });
    return null;
  }

  body(m, at) {
    const h = this.heads.get(m.id);
    if (h) {
      this.heads.delete(m.id);
      this.bodies.delete(m.id);
      return { seq: h.seq, updatedMs: h.updatedMs, id: m.id, state: m.state };
    }
    this.bodies.set(m.id, { id: m.id, state: m.state, at });
    return null;
  }

  /** Forgets the halves of publish `id` (its state was delivered, or is older than the one delivered). */
  drop(id) {
    this.heads.delete(id);
    this.bodies.delete(id);
  }

  /** Forgets the headers of seqs up to `seq` (a state at least as new was delivered): they need no body any more. */
  settle(seq) {
    for (const [id, h] of this.heads) if (h.seq <= seq) this.heads.delete(id);
  }

  /** Whether more halves are held than allowed: the follower reads the snapshot. */
  overfull() {
    return this.bodies.size > MAX_HELD_BODIES || this.heads.size > MAX_HELD_HEADS;
  }

  /** Whether a half held since `at` or earlier is still unpaired at `now` after `holdMs`. */
  stale(now, holdMs = HOLD_MS) {
    for (const h of this.heads.values()) if (now - h.at >= holdMs) return true;
    for (const b of this.bodies.values()) if (now - b.at >= holdMs) return true;
    return false;
  }

  /** Whether the half of publish `id` is held. */
  holds(id) {
    return this.heads.has(id) || this.bodies.has(id);
  }

  get size() {
    return this.heads.size + this.bodies.size;
  }

  clear() {
    this.heads.clear();
    this.bodies.clear();
  }
}

/**
 * The reply of ms_connect after its nonce, `[sealed channel, hb_ms,
 * on_replicas]` (docs/PROTOCOL.md, "Functions"): {sealed, hbMs,
 * onReplicas}, or null when malformed (on_replicas missing, as protocol
 * 9 answered, or anything but 0 or 1, included). onReplicas: the
 * deployment's replicas carry the channel's messages, so followers may
 * subscribe on them; otherwise only the primary does.
 */
export function parseConnectReply(v) {
  if (!Array.isArray(v) || v.length !== 3 || typeof v[0] !== "string") return null;
  const int = (x) => (typeof x === "number" ? x : typeof x === "string" && DIGITS.test(x) ? Number(x) : NaN);
  const hbMs = int(v[1]);
  const on = int(v[2]);
  if (!Number.isSafeInteger(hbMs) || hbMs < 0 || (on !== 0 && on !== 1)) return null;
  return { sealed: v[0], hbMs, onReplicas: on === 1 };
}

/**
 * What a probe's answer says of a subscription on endpoint `subscribed`:
 * the probe was answered by endpoint `node` (the primary), reaching
 * `receivers` of that node's subscriptions; `onReplicas`: replicas carry
 * the channel (ms_connect). "gone": the node subscribed on answered and
 * its subscription was not among those reached (Redis has no such
 * subscription). "elsewhere": another node answered and only the primary
 * carries the channel: the subscription can never hear the echo, so the
 * attempt fails at once and the next one goes to `node`. "echo": the
 * echo on the subscription decides.
 */
export function probeVerdict({ node, subscribed, receivers, onReplicas }) {
  if (node === subscribed) return receivers === 0 ? "gone" : "echo";
  return onReplicas ? "echo" : "elsewhere";
}
