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

/**
 * A delta from `base` to `target` (Uint8Array, valid UTF-8 both): copies of
 * the common prefix and suffix and the middle as one literal, every piece
 * whole characters. Returns the delta's bytes.
 */
export function makeDelta(base, target) {
  const la = base.length;
  const lb = target.length;
  let p = 0;
  const max = Math.min(la, lb);
  while (p < max && base[p] === target[p]) p++;
  while (p > 0 && ((p < la && isCont(base[p])) || (p < lb && isCont(target[p])))) p--;
  let s = 0;
  while (s < max - p && base[la - 1 - s] === target[lb - 1 - s]) s++;
  while (s > 0 && (isCont(base[la - s]) || isCont(target[lb - s]))) s--;
  const enc = new TextEncoder();
  const parts = [enc.encode(putInt(lb) + "\n")];
  if (p > 0) parts.push(enc.encode(putInt(p) + "@0,"));
  const mid = lb - p - s;
  if (mid > 0) {
    parts.push(enc.encode(putInt(mid) + ":"));
    parts.push(target.subarray(p, p + mid));
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
