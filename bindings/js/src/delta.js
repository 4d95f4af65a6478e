// Deltas between states in Fossil's delta format, keeping whole UTF-8
// characters (docs/PROTOCOL.md, "Deltas"). Works on bytes (Uint8Array).

const DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) VALUE[DIGITS.charCodeAt(i)] = i;

/** Fossil's checksum: sum mod 2^32 of the bytes as big-endian 32-bit words. */
export function checksum(z) {
  let sum = 0;
  const n = z.length;
  const whole = n - (n % 4);
  for (let i = 0; i < whole; i += 4) {
    sum = (sum + ((z[i] << 24) | (z[i + 1] << 16) | (z[i + 2] << 8) | z[i + 3])) >>> 0;
  }
  if (whole < n) {
    let last = 0;
    for (let i = whole; i < n; i++) last |= z[i] << (24 - 8 * (i - whole));
    sum = (sum + (last >>> 0)) >>> 0;
  }
  return sum >>> 0;
}

function putInt(v) {
  if (v === 0) return "0";
  let s = "";
  while (v > 0) {
    s = DIGITS[v % 64] + s;
    v = Math.floor(v / 64);
  }
  return s;
}

const isCont = (b) => (b & 0xc0) === 0x80;

/**
 * Applies `delta` (Uint8Array) to `base` (Uint8Array). Returns the result's
 * bytes, or null when the delta is malformed or does not verify.
 */
export function applyDelta(base, delta) {
  let pos = 0;
  const getInt = () => {
    const start = pos;
    let v = 0;
    while (pos < delta.length) {
      const c = delta[pos];
      const d = c < 128 ? VALUE[c] : -1;
      if (d < 0) break;
      if (pos - start >= 8) return -1; // no state is that long
      v = v * 64 + d;
      pos++;
    }
    return pos > start ? v : -1;
  };
  const limit = getInt();
  if (limit < 0 || delta[pos] !== 0x0a) return null;
  pos++;
  const out = new Uint8Array(limit);
  let len = 0;
  while (pos < delta.length) {
    const n = getInt();
    if (n < 0) return null;
    const op = delta[pos++];
    if (op === 0x40 /* @ */) {
      const offset = getInt();
      if (offset < 0 || delta[pos] !== 0x2c /* , */) return null;
      pos++;
      if (offset + n > base.length || len + n > limit) return null;
      out.set(base.subarray(offset, offset + n), len);
      len += n;
    } else if (op === 0x3a /* : */) {
      if (pos + n > delta.length || len + n > limit) return null;
      out.set(delta.subarray(pos, pos + n), len);
      len += n;
      pos += n;
    } else if (op === 0x3b /* ; */) {
      if (pos !== delta.length || len !== limit || checksum(out) !== n) return null;
      return out;
    } else {
      return null;
    }
  }
  return null;
}

/** The shortest match worth a copy command (a copy takes up to ~10 bytes). */
const MIN_COPY = 24;
/** Middles up to this many bytes are sent as one literal. */
const SHORT_MIDDLE = 256;
/** Bytes of the base indexed on either side of an edit at least. */
const WINDOW = 64 * 1024;
/** Width of the blocks of the base that the matcher indexes. */
const BLOCK = 16;
/** Slots a lookup in the matcher's table tries at most. */
const PROBES = 8;
/** Most copy and insert commands a delta may have (the functions refuse more). */
const MAX_COMMANDS = 2048;

/** Whether position `i` of `s` starts a character (or is its end). */
const boundary = (s, i) => i >= s.length || !isCont(s[i]);

/** A 32-bit hash of the BLOCK bytes of `s` at `i`. */
function blockHash(s, i) {
  let h = 0x811c9dc5;
  for (let k = 0; k < BLOCK; k += 4) {
    const v = s[i + k] | (s[i + k + 1] << 8) | (s[i + k + 2] << 16) | (s[i + k + 3] << 24);
    h = Math.imul(h ^ v, 0x9e3779b1);
    h ^= h >>> 15;
  }
  return h >>> 0;
}

function sameBlock(a, i, b, j) {
  for (let k = 0; k < BLOCK; k++) if (a[i + k] !== b[j + k]) return false;
  return true;
}

/**
 * The commands for `t[from..to)`: copies of blocks of `b` found by a hash
 * of 16-byte windows (only the base around the middle is indexed: what an
 * edit costs grows with the edit, not with the state), literals between
 * them, every piece whole characters. Null when it would take more than
 * `room` commands.
 */
function middle(b, t, from, to, room) {
  const cmds = [];
  if (to - from <= SHORT_MIDDLE || b.length < BLOCK) {
    if (to > from) cmds.push(["i", from, to]);
    return cmds;
  }
  const margin = Math.max(WINDOW, 8 * (to - from));
  const lo = Math.max(0, from - margin);
  const hi = Math.min(b.length, b.length - (t.length - to) + margin);
  const blocks = Math.floor(Math.max(0, hi - lo) / BLOCK);
  let size = 16;
  while (size < blocks * 2) size *= 2;
  const mask = size - 1;
  const table = new Uint32Array(size); // slot -> block start + 1 (0: empty)
  for (let k = 0; k < blocks; k++) {
    const at = lo + k * BLOCK;
    let slot = blockHash(b, at) & mask;
    // A block equal to one indexed already is not indexed again, and
    // probing is bounded: repetitive states stay linear.
    for (let p = 0; p < PROBES; p++) {
      const e = table[slot];
      if (e === 0) { table[slot] = at + 1; break; }
      if (sameBlock(b, e - 1, b, at)) break;
      slot = (slot + 1) & mask;
    }
  }
  let lit = from;
  let i = from;
  while (i + BLOCK <= to) {
    let slot = blockHash(t, i) & mask;
    let found = -1;
    for (let p = 0; p < PROBES; p++) {
      const e = table[slot];
      if (e === 0) break;
      if (sameBlock(b, e - 1, t, i)) { found = e - 1; break; }
      slot = (slot + 1) & mask;
    }
    if (found < 0) { i++; continue; }
    // Extend forward, then backward into the pending literal.
    let len = BLOCK;
    while (i + len < to && found + len < b.length && t[i + len] === b[found + len]) len++;
    let ti = i, bi = found;
    while (ti > lit && bi > 0 && t[ti - 1] === b[bi - 1]) { ti--; bi--; len++; }
    // Whole characters only.
    while (len > 0 && !boundary(t, ti)) { ti++; bi++; len--; }
    while (len > 0 && !boundary(t, ti + len)) len--;
    if (len < MIN_COPY) { i++; continue; }
    if (cmds.length + 4 > room) return null;
    if (ti > lit) cmds.push(["i", lit, ti]);
    cmds.push(["c", len, bi]);
    i = ti + len;
    lit = i;
  }
  if (to > lit) cmds.push(["i", lit, to]);
  return cmds;
}

/**
 * A delta from `base` to `target` (Uint8Array, valid UTF-8 both): copies of
 * the common prefix and suffix, and inside the middle copies of what it
 * shares with the base around it (two far apart edits of a large state
 * cost about their own size), literals between them, every piece whole
 * characters. Returns the delta's bytes.
 */
export function makeDelta(base, target) {
  const la = base.length;
  const lb = target.length;
  let p = 0;
  const max = Math.min(la, lb);
  while (p < max && base[p] === target[p]) p++;
  while (p > 0 && !boundary(target, p)) p--;
  let s = 0;
  while (s < max - p && base[la - 1 - s] === target[lb - 1 - s]) s++;
  while (s > 0 && !boundary(target, lb - s)) s--;
  const mid = middle(base, target, p, lb - s, MAX_COMMANDS - 2) ?? (lb - s > p ? [["i", p, lb - s]] : []);
  const enc = new TextEncoder();
  const parts = [enc.encode(putInt(lb) + "\n")];
  if (p > 0) parts.push(enc.encode(putInt(p) + "@0,"));
  for (const c of mid) {
    if (c[0] === "c") parts.push(enc.encode(putInt(c[1]) + "@" + putInt(c[2]) + ","));
    else {
      parts.push(enc.encode(putInt(c[2] - c[1]) + ":"));
      parts.push(target.subarray(c[1], c[2]));
    }
  }
  if (s > 0) parts.push(enc.encode(putInt(s) + "@" + putInt(la - s) + ","));
  parts.push(enc.encode(putInt(checksum(target)) + ";"));
  const total = parts.reduce((a, x) => a + x.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const x of parts) {
    out.set(x, at);
    at += x.length;
  }
  return out;
}
