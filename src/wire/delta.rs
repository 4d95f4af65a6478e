//! Deltas between states, in Fossil's delta format (see docs/PROTOCOL.md,
//! "Deltas"), so that any client can apply them with an existing Fossil
//! delta implementation.
//!
//! A delta is `<target length>\n`, then commands: `<n>@<offset>,` copies
//! `n` bytes of the base from `offset`; `<n>:<bytes>` inserts the `n`
//! bytes that follow; `<checksum>;` ends it with Fossil's 32-bit checksum
//! of the target. Numbers are written in Fossil's base-64 digits
//! (`0-9 A-Z _ a-z ~`), most significant first.
//!
//! The encoder here keeps every delta valid UTF-8 when its states are:
//! copies cover whole characters of the base, and inserted literals are
//! whole characters (a match that would split a multi-byte character is
//! shortened, the bytes go to the literal). Webdis drops channel messages
//! that are not valid UTF-8, and the functions refuse them.

/// Fossil's digits, value 0 to 63.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// The value of a digit, or None.
fn digit_value(c: u8) -> Option<u64> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u64),
        b'A'..=b'Z' => Some((c - b'A') as u64 + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some((c - b'a') as u64 + 37),
        b'~' => Some(63),
        _ => None,
    }
}

fn put_int(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 12];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Reads a number at `*pos` (at least one digit).
fn get_int(d: &[u8], pos: &mut usize) -> Option<u64> {
    let start = *pos;
    let mut v: u64 = 0;
    while let Some(x) = d.get(*pos).and_then(|&c| digit_value(c)) {
        // At most 10 digits (60 bits): more is no length of a state.
        if *pos - start >= 10 {
            return None;
        }
        v = (v << 6) | x;
        *pos += 1;
    }
    (*pos > start).then_some(v)
}

/// Fossil's checksum: the sum, modulo 2^32, of the target read as
/// big-endian 32-bit words, the last one padded with zero bytes.
pub fn checksum(z: &[u8]) -> u32 {
    let mut sums = Sums::default();
    sums.add(0, z);
    sums.value()
}

/// Fossil's checksum summed piece by piece: the four residue sums of the
/// bytes (their sums at positions 0, 1, 2 and 3 modulo 4), so that bytes
/// can be added where they land in the target, in any order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums([u64; 4]);

impl Sums {
    /// The sums of a whole state.
    pub(crate) fn of(z: &[u8]) -> Sums {
        let mut sums = Sums::default();
        sums.add(0, z);
        sums
    }

    /// `self` less `other` (sums of bytes that `self` counted).
    fn less(self, other: Sums) -> Sums {
        Sums(std::array::from_fn(|i| self.0[i].wrapping_sub(other.0[i])))
    }

    /// `self` plus `other`.
    fn plus(self, other: Sums) -> Sums {
        Sums(std::array::from_fn(|i| self.0[i].wrapping_add(other.0[i])))
    }

    /// The sums of the same bytes moved `by` places further (modulo 4).
    fn moved(self, by: usize) -> Sums {
        Sums(std::array::from_fn(|i| self.0[(i + 4 - by % 4) % 4]))
    }

    /// The sums of `state` (whose sums are `self`) with `state[p..x]`
    /// replaced by `put`, worked out from the sums of the bytes removed
    /// and inserted, without reading the rest of the state, unless the end
    /// moves by other than a multiple of 4 places: then the end's sums
    /// change places, and the shorter of the start and the end is summed
    /// to tell the two apart. The leader's checksum of a new state and the
    /// follower's of a delta applied in place are both this.
    pub(crate) fn edited(self, state: &[u8], p: usize, x: usize, put: &[u8]) -> Sums {
        let kept = self.less(Sums::at(p, &state[p..x]));
        let inserted = Sums::at(p, put);
        // Places the end moves by (modulo 4).
        let by = (p + put.len() + 4 - x % 4) % 4;
        if by == 0 {
            return kept.plus(inserted);
        }
        let s = state.len() - x;
        let (start, end) = if s <= p {
            let end = Sums::at(x, &state[x..]);
            (kept.less(end), end)
        } else {
            let start = Sums::at(0, &state[..p]);
            (start, kept.less(start))
        };
        start.plus(inserted).plus(end.moved(by))
    }

    /// The bytes `edited` reads for such an edit (an upper bound).
    fn edit_cost(len: usize, p: usize, x: usize, put: usize) -> usize {
        let by = (p + put + 4 - x % 4) % 4;
        (x - p) + put + if by == 0 { 0 } else { p.min(len - x) }
    }

    /// The sums of `z` lying at position `at`.
    fn at(at: usize, z: &[u8]) -> Sums {
        let mut sums = Sums::default();
        sums.add(at, z);
        sums
    }
    /// Adds `z`, which starts at position `at` of the target. Summed eight
    /// bytes at a time: the bytes at even and at odd places of a 64-bit
    /// word, masked, add up in 16-bit slots that cannot overflow within a
    /// block of 256 words (256 * 255 < 65536). No byte swapping, and the
    /// compiler vectorises it: twice as fast as a sum of big-endian words.
    fn add(&mut self, at: usize, z: &[u8]) {
        const M: u64 = 0x00FF_00FF_00FF_00FF;
        // A word's first byte is at `at` modulo 4 (words are 8 bytes).
        let a = at % 4;
        let r = &mut self.0;
        let mut flush = |e: u64, o: u64| {
            r[a] += (e & 0xFFFF) + ((e >> 32) & 0xFFFF);
            r[(a + 2) % 4] += ((e >> 16) & 0xFFFF) + (e >> 48);
            r[(a + 1) % 4] += (o & 0xFFFF) + ((o >> 32) & 0xFFFF);
            r[(a + 3) % 4] += ((o >> 16) & 0xFFFF) + (o >> 48);
        };
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap());
        let mut blocks = z.chunks_exact(2048);
        for block in blocks.by_ref() {
            let (mut e, mut o) = (0u64, 0u64);
            for c in block.chunks_exact(8) {
                let v = word(c);
                e += v & M;
                o += (v >> 8) & M;
            }
            flush(e, o);
        }
        // Fewer than 256 words left.
        let mut words = blocks.remainder().chunks_exact(8);
        let (mut e, mut o) = (0u64, 0u64);
        for c in words.by_ref() {
            let v = word(c);
            e += v & M;
            o += (v >> 8) & M;
        }
        flush(e, o);
        for (i, &x) in words.remainder().iter().enumerate() {
            r[(a + i) % 4] += x as u64;
        }
    }

    fn value(&self) -> u32 {
        // Below 2^55: 8 MiB of 255 is below 2^31.
        let r = &self.0;
        (r[0] << 24)
            .wrapping_add(r[1] << 16)
            .wrapping_add(r[2] << 8)
            .wrapping_add(r[3]) as u32
    }
}

/// Appends `bytes` to `out` and their sums to `sums`, a slice at a time:
/// each slice is read once from memory for the sums and copied from the
/// cache, rather than the whole target read again for its checksum.
fn append_summed(out: &mut Vec<u8>, sums: &mut Sums, bytes: &[u8]) {
    for slice in bytes.chunks(16 * 1024) {
        sums.add(out.len(), slice);
        out.extend_from_slice(slice);
    }
}

/// Whether `b` continues a multi-byte UTF-8 character.
fn is_cont(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Whether position `i` of `s` starts a character (or is its end).
fn boundary(s: &[u8], i: usize) -> bool {
    s.get(i).is_none_or(|&b| !is_cont(b))
}

/// The shortest match worth a copy command (a copy takes up to ~10 bytes).
const MIN_COPY: usize = 24;
/// Middles up to this many bytes are sent as one literal.
const SHORT_MIDDLE: usize = 256;
/// Bytes of the base indexed on either side of an edit at least.
const WINDOW: usize = 64 * 1024;
/// Width of the blocks of the base that the matcher indexes.
const BLOCK: usize = 16;
/// Slots a lookup in the matcher's table tries at most.
const PROBES: usize = 8;

/// Most copy and insert commands a delta may have: the functions refuse
/// more (applying a delta costs Redis in proportion to its commands), so
/// the encoder gives a delta up before it gets there.
pub(crate) const MAX_COMMANDS: usize = 2048;

struct Writer {
    out: Vec<u8>,
    commands: usize,
}

impl Writer {
    fn copy(&mut self, n: usize, offset: usize) {
        if n > 0 {
            self.commands += 1;
            put_int(&mut self.out, n as u64);
            self.out.push(b'@');
            put_int(&mut self.out, offset as u64);
            self.out.push(b',');
        }
    }
    fn insert(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.commands += 1;
            put_int(&mut self.out, bytes.len() as u64);
            self.out.push(b':');
            self.out.extend_from_slice(bytes);
        }
    }
}

/// A delta that turns `base` into `target`. Valid UTF-8 (copies and
/// literals are whole characters).
pub fn create(base: &str, target: &str) -> String {
    create_within(base, target, usize::MAX).expect("no limit")
}

/// `create`, given up (None) as soon as the delta would exceed `limit`
/// bytes: a state that changed a lot costs little before it goes in full.
pub fn create_within(base: &str, target: &str, limit: usize) -> Option<String> {
    create_with(base, target, limit, |_, _| Sums::of(target.as_bytes())).map(|(d, _)| d)
}

/// `create_within`, given the base's sums (`Sums::of(base)`); also gives
/// the target's. Its checksum is worked out from them and the edit (the
/// bytes between the common prefix and suffix, removed and inserted:
/// `Sums::edited`) rather than summed over the whole target, unless that
/// would read more than the target (a change of most of the state).
pub(crate) fn create_summed(
    base: &str,
    base_sums: Sums,
    target: &str,
    limit: usize,
) -> Option<(String, Sums)> {
    let (b, t) = (base.as_bytes(), target.as_bytes());
    create_with(base, target, limit, |p, s| {
        let (x, put) = (b.len() - s, &t[p..t.len() - s]);
        if Sums::edit_cost(b.len(), p, x, put.len()) < t.len() {
            base_sums.edited(b, p, x, put)
        } else {
            Sums::of(t)
        }
    })
}

/// `create_within`; `sums(p, s)` gives the target's sums, `p` and `s` the
/// lengths of its common prefix and suffix with the base.
fn create_with(
    base: &str,
    target: &str,
    limit: usize,
    sums: impl FnOnce(usize, usize) -> Sums,
) -> Option<(String, Sums)> {
    let (b, t) = (base.as_bytes(), target.as_bytes());
    let mut w = Writer {
        out: Vec::with_capacity(64),
        commands: 0,
    };
    put_int(&mut w.out, t.len() as u64);
    w.out.push(b'\n');
    // The common prefix and suffix, cut back to character boundaries (equal
    // bytes are whole characters in both strings alike).
    let mut p = common_prefix(b, t);
    while p > 0 && !boundary(t, p) {
        p -= 1;
    }
    let mut s = common_suffix(&b[p..], &t[p..]);
    while s > 0 && !boundary(t, t.len() - s) {
        s -= 1;
    }
    w.copy(p, 0);
    if !middle(&mut w, b, t, p, t.len() - s, limit) {
        return None;
    }
    w.copy(s, b.len() - s);
    let sums = sums(p, s);
    put_int(&mut w.out, sums.value() as u64);
    w.out.push(b';');
    if w.out.len() > limit {
        return None;
    }
    // Every literal and copy is whole characters of valid UTF-8 strings.
    let delta = String::from_utf8(w.out).expect("deltas of UTF-8 states are UTF-8");
    Some((delta, sums))
}

/// The length of the common prefix of a and b, compared a block at a
/// time (slice equality is memcmp), big blocks first: a small edit of a
/// 1 MiB state costs a few hundred memcmp calls, not a million byte
/// comparisons.
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut p = 0;
    for chunk in [4096, 64] {
        while p + chunk <= n && a[p..p + chunk] == b[p..p + chunk] {
            p += chunk;
        }
    }
    p + a[p..n]
        .iter()
        .zip(&b[p..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The length of the common suffix of a and b, the same way.
pub(crate) fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (ea, eb) = (a.len(), b.len());
    let mut s = 0;
    for chunk in [4096, 64] {
        while s + chunk <= n && a[ea - s - chunk..ea - s] == b[eb - s - chunk..eb - s] {
            s += chunk;
        }
    }
    s + a[..ea - s]
        .iter()
        .rev()
        .zip(b[..eb - s].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Commands for `t[from..to]`: copies of blocks of `b` found by a hash
/// of 16-byte windows, literals between them. False as soon as the delta
/// exceeds `limit` bytes.
fn middle(w: &mut Writer, b: &[u8], t: &[u8], from: usize, to: usize, limit: usize) -> bool {
    // A short middle (a few values edited: a waypoint moved) goes as it
    // is: indexing the whole base would cost more than the bytes saved.
    if to - from <= SHORT_MIDDLE || b.len() < BLOCK {
        w.insert(&t[from..to]);
        return w.out.len() <= limit;
    }
    // Only the base around the middle is indexed (its own middle and
    // WINDOW bytes, or 8 times the middle's length, either side): what an
    // edit of a few places costs grows with the edit, not with the state
    // (indexing all of a 1 MiB base took ~4 ms for every moved waypoint).
    // Content moved from farther away goes as a literal.
    let margin = WINDOW.max(8 * (to - from));
    let lo = from.saturating_sub(margin);
    let hi = (b.len() - (t.len() - to))
        .saturating_add(margin)
        .min(b.len());
    // Open addressing: slot -> block start + 1 (0 = empty).
    let blocks = (hi - lo) / BLOCK;
    let size = (blocks * 2).next_power_of_two().max(16);
    let shift = 64 - size.trailing_zeros();
    let hash = |win: &[u8]| -> usize {
        let v = u128::from_le_bytes(win.try_into().unwrap());
        let h =
            ((v as u64) ^ ((v >> 64) as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> shift) as usize
    };
    let mut table = vec![0u32; size];
    for k in 0..blocks {
        let at = lo + k * BLOCK;
        let block = &b[at..at + BLOCK];
        let mut slot = hash(block);
        // A block equal to one indexed already is not indexed again, and
        // probing is bounded: repetitive states stay linear.
        for _ in 0..PROBES {
            match table[slot] {
                0 => {
                    table[slot] = at as u32 + 1;
                    break;
                }
                t if &b[t as usize - 1..t as usize - 1 + BLOCK] == block => break,
                _ => slot = (slot + 1) & (size - 1),
            }
        }
    }
    let mut lit = from;
    let mut i = from;
    while i + BLOCK <= to {
        if w.out.len() + (i - lit) > limit {
            return false;
        }
        let win = &t[i..i + BLOCK];
        let mut slot = hash(win);
        let mut found = None;
        for _ in 0..PROBES {
            if table[slot] == 0 {
                break;
            }
            let at = table[slot] as usize - 1;
            if &b[at..at + BLOCK] == win {
                found = Some(at);
                break;
            }
            slot = (slot + 1) & (size - 1);
        }
        let Some(at) = found else {
            i += 1;
            continue;
        };
        // Extend forward, then backward into the pending literal.
        let mut len = BLOCK;
        while i + len < to && at + len < b.len() && t[i + len] == b[at + len] {
            len += 1;
        }
        let (mut ti, mut bi) = (i, at);
        while ti > lit && bi > 0 && t[ti - 1] == b[bi - 1] {
            ti -= 1;
            bi -= 1;
            len += 1;
        }
        // Whole characters only.
        while len > 0 && !boundary(t, ti) {
            ti += 1;
            bi += 1;
            len -= 1;
        }
        while len > 0 && !boundary(t, ti + len) {
            len -= 1;
        }
        if len < MIN_COPY {
            i += 1;
            continue;
        }
        // Room for this literal and copy, the last literal and the suffix.
        if w.commands + 4 > MAX_COMMANDS {
            return false;
        }
        w.insert(&t[lit..ti]);
        w.copy(len, bi);
        i = ti + len;
        lit = i;
    }
    w.insert(&t[lit..to]);
    w.out.len() <= limit
}

/// Why a delta could not be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// Not a delta, or it reaches outside its base or its declared length.
    Malformed(&'static str),
    /// The result does not have the checksum the delta declares.
    Checksum,
    /// The result is not valid UTF-8.
    NotUtf8,
}

/// Applies `delta` to `base`: the target, its length and checksum
/// verified, at most `max` bytes, valid UTF-8.
pub fn apply(base: &str, delta: &str, max: usize) -> Result<String, ApplyError> {
    use ApplyError::Malformed;
    let (b, d) = (base.as_bytes(), delta.as_bytes());
    let mut pos = 0;
    let limit = get_int(d, &mut pos).ok_or(Malformed("no target length"))? as usize;
    if limit > max {
        return Err(Malformed("the target is too large"));
    }
    if d.get(pos) != Some(&b'\n') {
        return Err(Malformed("no newline after the target length"));
    }
    pos += 1;
    // One byte more: room for the NUL a follower's event appends, so the
    // result is not copied again on its way to the callback.
    let mut out: Vec<u8> = Vec::with_capacity(limit + 1);
    // The target's checksum, summed as it is written.
    let mut sums = Sums::default();
    // Whether every copy and literal is whole characters (of the base, of
    // the delta): then the result is valid UTF-8 without a second look.
    let mut whole = true;
    loop {
        let n = get_int(d, &mut pos).ok_or(Malformed("a command without a number"))? as usize;
        let op = *d
            .get(pos)
            .ok_or(Malformed("the delta ends without a checksum"))?;
        pos += 1;
        match op {
            b'@' => {
                let off =
                    get_int(d, &mut pos).ok_or(Malformed("a copy without an offset"))? as usize;
                if d.get(pos) != Some(&b',') {
                    return Err(Malformed("no comma after a copy"));
                }
                pos += 1;
                if off.checked_add(n).is_none_or(|e| e > b.len()) {
                    return Err(Malformed("a copy reaches outside the base"));
                }
                if out.len() + n > limit {
                    return Err(Malformed("a copy reaches past the target length"));
                }
                whole &= base.is_char_boundary(off) && base.is_char_boundary(off + n);
                append_summed(&mut out, &mut sums, &b[off..off + n]);
            }
            b':' => {
                if pos.checked_add(n).is_none_or(|e| e > d.len()) {
                    return Err(Malformed("a literal reaches past the delta"));
                }
                if out.len() + n > limit {
                    return Err(Malformed("a literal reaches past the target length"));
                }
                whole &= delta.is_char_boundary(pos) && delta.is_char_boundary(pos + n);
                append_summed(&mut out, &mut sums, &d[pos..pos + n]);
                pos += n;
            }
            b';' => {
                if pos != d.len() {
                    return Err(Malformed("bytes after the checksum"));
                }
                if out.len() != limit {
                    return Err(Malformed("the target is shorter than declared"));
                }
                if sums.value() as u64 != n as u64 {
                    return Err(ApplyError::Checksum);
                }
                if whole {
                    // SAFETY: `out` is a concatenation of slices of `base`
                    // and `delta` (both &str) each cut at character
                    // boundaries: whole characters of valid UTF-8.
                    return Ok(unsafe { String::from_utf8_unchecked(out) });
                }
                return String::from_utf8(out).map_err(|_| ApplyError::NotUtf8);
            }
            _ => return Err(Malformed("unknown command")),
        }
    }
}

/// Applies `delta` to `state` in place when the delta is one edit: a copy
/// of the state's start, at most one literal, a copy of its end (the
/// library's deltas of a small change), every part whole characters.
/// `sums` are the state's; the result's checksum is worked out from them
/// and from the bytes the edit removes and inserts (and the smaller of
/// the two copies when the end moves by other than a multiple of 4), and
/// verified before any byte is written. Ok(true): `state` and `sums` are
/// the result's; Ok(false): not such a delta (nothing changed: `apply`
/// it); an error: nothing changed, and `apply` gives the same error.
pub(crate) fn apply_in_place(
    state: &mut String,
    sums: &mut Sums,
    delta: &str,
    max: usize,
) -> Result<bool, ApplyError> {
    let (b, d) = (state.as_bytes(), delta.as_bytes());
    let mut pos = 0;
    let Some(limit) = get_int(d, &mut pos).map(|l| l as usize) else {
        return Ok(false);
    };
    if limit > max || d.get(pos) != Some(&b'\n') {
        return Ok(false);
    }
    pos += 1;
    // (count, offset in the base) of copies, (start in the delta, count)
    // of a literal, in order; at most three commands.
    let mut parts: Vec<(bool, usize, usize)> = Vec::with_capacity(3);
    let check = loop {
        let (Some(n), Some(&op)) = (get_int(d, &mut pos), d.get(pos)) else {
            return Ok(false);
        };
        let n = n as usize;
        pos += 1;
        match op {
            b'@' => {
                let Some(off) = get_int(d, &mut pos).map(|o| o as usize) else {
                    return Ok(false);
                };
                if d.get(pos) != Some(&b',') || off.checked_add(n).is_none_or(|e| e > b.len()) {
                    return Ok(false);
                }
                pos += 1;
                parts.push((true, n, off));
            }
            b':' if pos.checked_add(n).is_some_and(|e| e <= d.len()) => {
                parts.push((false, pos, n));
                pos += n;
            }
            b';' if pos == d.len() => break n as u64,
            _ => return Ok(false),
        }
        if parts.len() > 3 {
            return Ok(false);
        }
    };
    // The start kept (p bytes), the end kept (from x on), the literal.
    let mut rest = &parts[..];
    let p = match rest.first() {
        Some(&(true, n, 0)) => {
            rest = &rest[1..];
            n
        }
        _ => 0,
    };
    let x = match rest.last() {
        Some(&(true, n, off)) if off + n == b.len() => {
            rest = &rest[..rest.len() - 1];
            off
        }
        _ => b.len(),
    };
    let (at, m) = match rest {
        [] => (0, 0),
        [(false, at, m)] => (*at, *m),
        _ => return Ok(false),
    };
    let s = b.len() - x;
    if p > x
        || p + m + s != limit
        || !state.is_char_boundary(p)
        || !state.is_char_boundary(x)
        || !delta.is_char_boundary(at)
        || !delta.is_char_boundary(at + m)
    {
        return Ok(false);
    }
    // The result's sums: the start's, the literal's where it lands, the
    // end's moved to where it lands, from the state's.
    let literal = &delta[at..at + m];
    let result = sums.edited(b, p, x, literal.as_bytes());
    if result.value() as u64 != check {
        return Err(ApplyError::Checksum);
    }
    state.replace_range(p..x, literal);
    *sums = result;
    Ok(true)
}

#[cfg(test)]
#[path = "../../tests/common/edits.rs"]
mod edits;

#[cfg(test)]
mod tests {
    use super::edits::{edit, text, Rng};
    use super::*;

    /// The copy and insert commands of a delta.
    fn commands(delta: &str) -> usize {
        let d = delta.as_bytes();
        let mut pos = 0;
        get_int(d, &mut pos).unwrap();
        pos += 1;
        let mut n = 0;
        loop {
            let v = get_int(d, &mut pos).unwrap() as usize;
            match d[pos] {
                b'@' => {
                    pos += 1;
                    get_int(d, &mut pos).unwrap();
                    pos += 1;
                }
                b':' => pos += 1 + v,
                _ => return n,
            }
            n += 1;
        }
    }

    #[test]
    fn deltas_stay_within_the_command_limit_of_the_functions() {
        // 8,192 distinct 16-byte blocks, moved about with a byte between
        // each: a faithful delta would need over 16,000 commands.
        let block = |k: usize| format!("{k:015}|");
        let base: String = (0..8192).map(block).collect();
        let target: String = (0..8192).rev().map(|k| format!("{}x", block(k))).collect();
        match create_within(&base, &target, usize::MAX) {
            None => {}
            Some(d) => {
                assert!(commands(&d) <= MAX_COMMANDS, "{} commands", commands(&d));
                assert_eq!(apply(&base, &d, usize::MAX).unwrap(), target);
            }
        }
        // A small edit is a handful of commands.
        let edited = base.replacen("000000000004096|", "000000000004096!", 1);
        let d = create(&base, &edited);
        assert!(commands(&d) <= 3, "{d}");
    }

    #[test]
    fn numbers_use_fossils_digits() {
        let mut out = Vec::new();
        for v in [0u64, 1, 63, 64, 4095, 4096, 8 << 20] {
            out.clear();
            put_int(&mut out, v);
            let mut pos = 0;
            assert_eq!(get_int(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        out.clear();
        put_int(&mut out, 64);
        assert_eq!(out, b"10");
        out.clear();
        put_int(&mut out, 100);
        assert_eq!(out, b"1_");
    }

    #[test]
    fn checksum_is_fossils() {
        // Big-endian words summed: "abcd" = 0x61626364, "e" = 0x65000000.
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"abcd"), 0x6162_6364);
        assert_eq!(checksum(b"abcde"), 0x6162_6364 + 0x6500_0000);
        assert_eq!(
            checksum(b"abcdefg"),
            0x6162_6364u32.wrapping_add(0x6566_6700)
        );
        // The word-at-a-time sum against the definition: every length
        // around the 2048-byte blocks, every start offset, bytes of 255
        // (the most a 16-bit slot of a block adds up).
        let reference = |z: &[u8]| {
            z.chunks(4).fold(0u32, |sum, c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                sum.wrapping_add(u32::from_be_bytes(w))
            })
        };
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(checksum(&big), reference(&big));
        let full = vec![0xFFu8; 3 * 2048 + 16];
        for z in [&big[..], &full[..]] {
            for start in 0..9 {
                for len in (0..40).chain(2030..2070).chain(4090..4110) {
                    let part = &z[start..start + len];
                    assert_eq!(checksum(part), reference(part), "{start} {len}");
                }
            }
        }
        assert_eq!(checksum(&full), reference(&full));
    }

    /// `apply_in_place` on a copy of `base`: what it returns, and the state
    /// and sums it leaves.
    fn in_place(base: &str, d: &str, max: usize) -> (Result<bool, ApplyError>, String, Sums) {
        let (mut state, mut sums) = (base.to_string(), Sums::of(base.as_bytes()));
        let r = apply_in_place(&mut state, &mut sums, d, max);
        (r, state, sums)
    }

    #[test]
    fn one_edit_applies_in_place_as_apply_does() {
        // Random edits (one: in place; several: apply's), every shift of
        // the end modulo 4, the edit near either end.
        let mut r = Rng(0x1e_5ca1_ab1e);
        let mut placed = 0;
        for case in 0..600 {
            let n = r.below(6000);
            let base = text(&mut r, n);
            let mut target = base.clone();
            for _ in 0..1 + r.below(2) {
                target = edit(&mut r, &target, 40, usize::MAX);
            }
            let d = create(&base, &target);
            let (got, state, sums) = in_place(&base, &d, 1 << 23);
            match got {
                Ok(true) => {
                    placed += 1;
                    assert_eq!(state, target, "case {case}");
                    assert_eq!(sums, Sums::of(target.as_bytes()), "case {case}");
                }
                Ok(false) => assert_eq!(state, base, "case {case}"),
                Err(e) => panic!("case {case}: {e:?}"),
            }
        }
        assert!(placed > 150, "{placed}");
        // Every shift, the start and the end the shorter alike.
        let base: String = (0..5000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        for at in [0, 3, 1000, 4000, 4997, 5000] {
            for (cut, put) in [
                (0, "x"),
                (1, ""),
                (2, "xyz"),
                (3, "\u{e9}"),
                (1, "xy"),
                (0, ""),
            ] {
                let cut = cut.min(base.len() - at);
                let mut target = base.clone();
                target.replace_range(at..at + cut, put);
                let d = create(&base, &target);
                let (got, state, sums) = in_place(&base, &d, 1 << 23);
                assert_eq!((got, &state), (Ok(true), &target), "{at} {cut} {put}");
                assert_eq!(sums, Sums::of(target.as_bytes()));
            }
        }
        // A wrong checksum: refused, nothing changed, as apply refuses it;
        // deltas apply refuses or that are not one edit change nothing.
        let mut q = base.clone();
        q.replace_range(2000..2001, "Q");
        let good = create(&base, &q);
        assert_eq!(in_place(&base, &good, 1 << 23).1, q);
        let sum = &good[good.rfind(',').unwrap() + 1..good.len() - 1];
        let wrong = good.replacen(sum, if sum.starts_with('1') { "2" } else { "1" }, 1);
        let (got, state, _) = in_place(&base, &wrong, 1 << 23);
        assert_eq!(
            (got, state.as_str()),
            (Err(ApplyError::Checksum), base.as_str())
        );
        assert_eq!(apply(&base, &wrong, 1 << 23), Err(ApplyError::Checksum));
        let mut two = q.clone();
        two.replace_range(4000..4001, "R");
        for bad in [
            good.replace(';', ""),
            good.clone() + "x",
            good.replacen("@0,", "@1,", 1),
            good.replacen('\n', "1\n", 1),
            create(&base, &two),
        ] {
            let (got, state, _) = in_place(&base, &bad, 1 << 23);
            assert!(got != Ok(true) && state == base, "{bad}");
        }
        assert_eq!(in_place(&base, &good, 4999).0, Ok(false));
    }

    #[test]
    fn sums_of_an_edit_are_the_sums_of_its_result() {
        // Every edit of short states: every start and end of the bytes
        // removed, 0 to 8 bytes put in (every shift of the end modulo 4),
        // the empty state among them.
        let bytes: Vec<u8> = (0..13u32).map(|i| (i * 37 + 200) as u8).collect();
        let put: Vec<u8> = (0..8u32).map(|i| (i * 59 + 91) as u8).collect();
        for len in 0..bytes.len() {
            let state = &bytes[..len];
            let sums = Sums::of(state);
            for p in 0..=len {
                for x in p..=len {
                    for m in 0..=put.len() {
                        let result = [&state[..p], &put[..m], &state[x..]].concat();
                        assert_eq!(
                            sums.edited(state, p, x, &put[..m]),
                            Sums::of(&result),
                            "{len} {p} {x} {m}"
                        );
                    }
                }
            }
        }
        // Large states: the edit at the start, the end and the middle, the
        // length changed by -8 to +8 (the start or the end the shorter).
        let big: Vec<u8> = (0..50_000u32).map(|i| (i * 13 + 5) as u8).collect();
        let sums = Sums::of(&big);
        for p in [0, 1, 2, 3, 5, 4099, 25_000, 49_990, 49_999, 50_000] {
            for cut in 0..=8usize {
                let x = (p + cut).min(big.len());
                for m in 0..=8 {
                    let result = [&big[..p], &put[..m], &big[x..]].concat();
                    assert_eq!(
                        sums.edited(&big, p, x, &put[..m]).value(),
                        checksum(&result),
                        "{p} {cut} {m}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_leaders_checksum_from_sums_is_the_full_checksum() {
        // States of ASCII and of multi-byte characters (2, 3 and 4 bytes),
        // empty ones; edits at the start, at the end and inside, each
        // length change from -8 to +8 bytes.
        let ascii: String = (0..6000)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        let multi = "é✈𝄞a".repeat(900);
        let puts = [
            "", "1", "12", "123", "1234", "12345", "é", "✈", "𝄞", "é✈", "𝄞𝄞", "1234567", "12345678",
        ];
        let mut checked = 0;
        for base in ["", "x", ascii.as_str(), multi.as_str()] {
            let sums = Sums::of(base.as_bytes());
            let chars: Vec<usize> = base.char_indices().map(|(i, _)| i).collect();
            let n = chars.len();
            for at in [
                0,
                1,
                2,
                3,
                n / 2,
                n.saturating_sub(3),
                n.saturating_sub(1),
                n,
            ] {
                for cut in 0..=8 {
                    if at > n {
                        continue;
                    }
                    let (p, x) = (
                        chars.get(at).copied().unwrap_or(base.len()),
                        chars.get(at + cut).copied().unwrap_or(base.len()),
                    );
                    for put in puts {
                        let mut target = base.to_string();
                        target.replace_range(p..x, put);
                        let Some((d, got)) = create_summed(base, sums, &target, usize::MAX) else {
                            panic!("no limit")
                        };
                        assert_eq!(got, Sums::of(target.as_bytes()), "{p} {x} {put:?}");
                        // The same delta as with a full sum; it applies.
                        assert_eq!(d, create(base, &target));
                        assert_eq!(apply(base, &d, 1 << 23), Ok(target.clone()));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
        // Random edits, several at once (a delta of many commands; the
        // sums still follow the prefix and suffix), and a state replaced
        // by another (summed in full).
        let mut r = Rng(0x50a5_1ead);
        for case in 0..300 {
            let n = r.below(5000);
            let base = text(&mut r, n);
            let mut target = base.clone();
            for _ in 0..1 + r.below(4) {
                target = edit(&mut r, &target, 300, usize::MAX);
            }
            let (d, got) =
                create_summed(&base, Sums::of(base.as_bytes()), &target, usize::MAX).unwrap();
            assert_eq!(got, Sums::of(target.as_bytes()), "case {case}");
            assert_eq!(apply(&base, &d, 1 << 23), Ok(target), "case {case}");
        }
        let other = text(&mut r, 3000);
        let (_, got) =
            create_summed(&ascii, Sums::of(ascii.as_bytes()), &other, usize::MAX).unwrap();
        assert_eq!(got, Sums::of(other.as_bytes()));
        // Given up past the limit, as create_within.
        assert_eq!(
            create_summed(&ascii, Sums::of(ascii.as_bytes()), &other, 100),
            None
        );
    }

    #[test]
    fn sums_added_piece_by_piece_at_their_places_are_the_checksum() {
        // Pieces of every length modulo 8 around the block size, added at
        // where they lie (in order, and backwards), as apply adds copies
        // and literals.
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + 5) as u8).collect();
        for cut in [1usize, 2, 3, 5, 7, 8, 9, 2047, 2049, 4099] {
            let pieces: Vec<(usize, &[u8])> = big
                .chunks(cut)
                .scan(0, |at, c| {
                    let p = (*at, c);
                    *at += c.len();
                    Some(p)
                })
                .collect();
            let mut forward = Sums::default();
            pieces.iter().for_each(|&(at, c)| forward.add(at, c));
            let mut backward = Sums::default();
            pieces.iter().rev().for_each(|&(at, c)| backward.add(at, c));
            assert_eq!(forward.value(), checksum(&big), "{cut}");
            assert_eq!(backward, forward, "{cut}");
        }
        // append_summed copies and sums alike, past its 16 KiB slices.
        let (mut out, mut sums) = (b"abc".to_vec(), Sums::default());
        sums.add(0, b"abc");
        append_summed(&mut out, &mut sums, &big);
        append_summed(&mut out, &mut sums, b"xy");
        assert_eq!(&out[3..3 + big.len()], &big[..]);
        assert_eq!(sums.value(), checksum(&out));
        // A piece at the wrong place sums to another checksum.
        let mut moved = Sums::default();
        moved.add(1, &big);
        assert_ne!(moved.value(), checksum(&big));
    }

    #[test]
    fn a_hand_written_delta_applies() {
        // "hello world" -> "hello there world"
        let target = "hello there world";
        let d = format!("H\n6@0,6:there 5@6,{};", {
            let mut o = Vec::new();
            put_int(&mut o, checksum(target.as_bytes()) as u64);
            String::from_utf8(o).unwrap()
        });
        assert_eq!(apply("hello world", &d, 1000).unwrap(), target);
        // The example of docs/PROTOCOL.md (checksum computed apart, with
        // the formula given there).
        assert_eq!(checksum(target.as_bytes()), 0x1867_b860);
        assert_eq!(d, "H\n6@0,6:there 5@6,OPwXW;");
        assert_eq!(create("hello world", target), d);
    }

    #[test]
    fn round_trips_random_edits_of_multibyte_text() {
        let mut r = Rng(0x5eed_1234_abcd_ef01);
        for case in 0..400 {
            let n = r.below(3000);
            let base = text(&mut r, n);
            let mut target = base.clone();
            for _ in 0..1 + r.below(4) {
                target = edit(&mut r, &target, 40, usize::MAX);
            }
            let d = create(&base, &target);
            assert_eq!(apply(&base, &d, 1 << 23), Ok(target.clone()), "case {case}");
            // Literals are whole characters: each literal is valid UTF-8 alone.
            let db = d.as_bytes();
            let mut pos = 0;
            get_int(db, &mut pos).unwrap();
            pos += 1;
            loop {
                let n = get_int(db, &mut pos).unwrap() as usize;
                let op = db[pos];
                pos += 1;
                match op {
                    b'@' => {
                        let off = get_int(db, &mut pos).unwrap() as usize;
                        pos += 1;
                        assert!(
                            boundary(base.as_bytes(), off) && boundary(base.as_bytes(), off + n)
                        );
                    }
                    b':' => {
                        assert!(
                            std::str::from_utf8(&db[pos..pos + n]).is_ok(),
                            "case {case}"
                        );
                        pos += n;
                    }
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn small_edits_of_large_states_give_small_deltas() {
        let mut r = Rng(77);
        let base: String = (0..20_000)
            .map(|i| format!("{{\"wp\":{i},\"lat\":47.{:07}}},", r.below(10_000_000)))
            .collect();
        let mut target = base.clone();
        let at = target.len() / 2;
        target.replace_range(at..at + 5, "9é9");
        let d = create(&base, &target);
        assert!(d.len() < 64, "{} bytes: {d}", d.len());
        assert_eq!(apply(&base, &d, 1 << 23).unwrap(), target);
        // A block moved far away is copied, not sent again.
        let moved = format!("{}{}", &base[base.len() / 2..], &base[..base.len() / 2]);
        let d = create(&base, &moved);
        assert!(d.len() < 100, "{} bytes", d.len());
        assert_eq!(apply(&base, &d, 1 << 23).unwrap(), moved);
        // Unrelated text: about its own size.
        let other = text(&mut r, 2000);
        let d = create(&base, &other);
        assert_eq!(apply(&base, &d, 1 << 23).unwrap(), other);
    }

    /// Edits at and around the block bounds of the prefix and suffix
    /// comparison: the delta holds exactly the changed byte.
    #[test]
    fn common_prefix_and_suffix_around_block_bounds() {
        let base: String = (0..10_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let last = base.len() - 1;
        for at in [
            0, 1, 63, 64, 65, 4095, 4096, 4097, 4160, 5000, 5903, 5904, 5935, 5936, 9935, 9936,
            9999,
        ] {
            let mut target = base.clone().into_bytes();
            target[at] = b'#';
            let target = String::from_utf8(target).unwrap();
            assert_eq!(common_prefix(base.as_bytes(), target.as_bytes()), at);
            assert_eq!(common_suffix(base.as_bytes(), target.as_bytes()), last - at);
            let d = create(&base, &target);
            assert!(d.contains("1:#"), "{at}: {d}");
            assert_eq!(apply(&base, &d, 1 << 23).unwrap(), target);
        }
        assert_eq!(common_prefix(b"abc", b"abcdef"), 3);
        assert_eq!(common_suffix(b"def", b"abcdef"), 3);
        assert_eq!(common_suffix(b"", b"abc"), 0);
    }

    /// Repetitive and unrelated large states take linear time (a table
    /// of equal blocks would make probing quadratic).
    #[test]
    fn repetitive_states_are_fast() {
        let started = std::time::Instant::now();
        let a = "x".repeat(4 << 20);
        let b = "y".repeat(4 << 20);
        let d = create(&a, &b);
        assert_eq!(apply(&a, &d, 8 << 20).unwrap(), b);
        let c = format!("{}{}", "x".repeat(2 << 20), "é".repeat(1000));
        let d = create(&a, &c);
        assert!(d.len() < c.len() / 2);
        assert_eq!(apply(&a, &d, 8 << 20).unwrap(), c);
        // Given up early when over a limit.
        assert_eq!(create_within(&a, &b, 1000), None);
        assert!(create_within(&a, &c, 1000).is_none());
        assert!(create_within(&a, &c, c.len() / 2).is_some());
        // Quadratic probing would take minutes at least. Unoptimised
        // builds (cargo-mutants' profile) are ~10x slower; a busy machine
        // slower again.
        let bound = std::time::Duration::from_secs(if cfg!(debug_assertions) { 60 } else { 5 })
            .mul_f64(crate::util::load_factor());
        assert!(
            started.elapsed() < bound,
            "{:?}, bound {bound:?}",
            started.elapsed()
        );
    }

    #[test]
    fn an_edit_inside_a_multibyte_character_keeps_whole_characters() {
        // "é" (C3 A9) and "ê" (C3 AA) share their first byte; "✈" (E2 9C 88)
        // and "✉" (E2 9C 89) two.
        for (a, b) in [("xxé", "xxê"), ("✈✈✈", "✈✉✈"), ("𝄞", "𝄟"), ("aé", "aè b")]
        {
            let base = a.repeat(20);
            let target = format!("{}{}{}", a.repeat(10), b, a.repeat(9));
            let d = create(&base, &target);
            assert!(std::str::from_utf8(d.as_bytes()).is_ok());
            assert_eq!(apply(&base, &d, 1 << 20).unwrap(), target);
        }
    }

    #[test]
    fn bad_deltas_are_refused() {
        let base = "hello world";
        let good = create(base, "hello there world");
        assert!(apply(base, &good, 1000).is_ok());
        // A wrong checksum.
        let bad = good.replacen(";", "", 1);
        let n = bad
            .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '~')
            .unwrap();
        let forged = format!("{}{};", &bad[..=n], "1");
        assert_eq!(apply(base, &forged, 1000), Err(ApplyError::Checksum));
        for d in [
            "",
            "H",
            "H\n",
            "H\n5@0,",
            "5\n6@0,0;",
            "5\n5@7,0;",
            "5\n9:hello0;",
            "5\n5@0,0;x",
            "5\n5#0,0;",
            "~~~~~~~~~~~\n0;",
            "2\n2:\u{e9}0;",
        ] {
            assert!(apply(base, d, 1000).is_err(), "{d:?}");
        }
        // Halves of characters: refused when the result is not UTF-8,
        // taken when the halves make whole characters again.
        let accent = "\u{e9}\u{e8}"; // C3 A9 C3 A8
        let sum = |s: &str| {
            let mut o = Vec::new();
            put_int(&mut o, checksum(s.as_bytes()) as u64);
            String::from_utf8(o).unwrap()
        };
        let halves = format!("4\n1@0,1@1,2@2,{};", sum(accent));
        assert_eq!(apply(accent, &halves, 100).as_deref(), Ok(accent));
        let bytes = [0xA9u8, 0xC3, 0xC3, 0xA8];
        let mut o = Vec::new();
        put_int(&mut o, checksum(&bytes) as u64);
        let broken = format!("4\n1@1,1@0,2@2,{};", String::from_utf8(o).unwrap());
        assert_eq!(apply(accent, &broken, 100), Err(ApplyError::NotUtf8));
        // Too large for the limit.
        assert!(matches!(
            apply(base, "G\n0;", 8),
            Err(ApplyError::Malformed(_))
        ));
        // Well-formed (the base twice, its checksum right) but its result
        // over the limit: refused by the limit alone.
        let twice = base.repeat(2);
        let mut o = b"M\nB@0,B@0,".to_vec();
        put_int(&mut o, checksum(twice.as_bytes()) as u64);
        o.push(b';');
        let d = std::str::from_utf8(&o).unwrap();
        assert_eq!(apply(base, d, 22).as_deref(), Ok(twice.as_str()));
        assert!(matches!(apply(base, d, 21), Err(ApplyError::Malformed(_))));
        // Splits a character: the checksum matches, the text is no UTF-8.
        let half = "\u{e9}".as_bytes()[..1].to_vec();
        let mut o = b"1\n1@0,".to_vec();
        put_int(&mut o, checksum(&half) as u64);
        o.push(b';');
        assert_eq!(
            apply("\u{e9}", std::str::from_utf8(&o).unwrap(), 10),
            Err(ApplyError::NotUtf8)
        );
    }
}

/// Where a moved waypoint of a 1 MiB plan costs the library time:
/// `cargo test --release --lib -- timing --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;
    use std::hint::black_box;
    use std::time::Instant;

    fn each(what: &str, n: u32, mut f: impl FnMut()) {
        let now = Instant::now();
        for _ in 0..n {
            f();
        }
        println!("{what}: {:?}", now.elapsed() / n);
    }

    #[test]
    #[ignore]
    fn time_a_moved_waypoint_of_1_mib() {
        let mut s = String::from("{\"waypoints\":[");
        let mut i = 0u64;
        while s.len() < 1_015_000 {
            let (lat, lon) = (i * 7919 % 1_000_000, i * 104_729 % 1_000_000);
            s.push_str(&format!(
                "{{\"seq\":{i},\"lat\":47.{lat:06},\"lon\":8.{lon:06},\"alt\":120.5,\"cmd\":16}},"
            ));
            i += 1;
        }
        s.push_str("{}]}");
        let mut t = s.clone();
        t.replace_range(500_000..500_006, "49.123");
        let d = create_within(&s, &t, t.len() / 2).unwrap();
        println!("{} bytes, delta {d:?}", t.len());
        let n = 200;
        each("create (leader)", n, || {
            black_box(create_within(&s, &t, t.len() / 2));
        });
        each("  of which prefix + suffix", n, || {
            black_box(common_prefix(s.as_bytes(), t.as_bytes()));
            black_box(common_suffix(s.as_bytes(), t.as_bytes()));
        });
        each("  of which checksum", n, || {
            black_box(checksum(black_box(t.as_bytes())));
        });
        each("apply (follower)", n, || {
            black_box(apply(&s, &d, usize::MAX).unwrap());
        });
        // The same result made as before the sums were fused with the
        // copies: copied, then read again for the checksum.
        let (p, lit) = (500_000, b"49.123");
        each("  the same copies, then the checksum (unfused)", n, || {
            let mut out = Vec::with_capacity(t.len() + 1);
            out.extend_from_slice(&s.as_bytes()[..p]);
            out.extend_from_slice(lit);
            out.extend_from_slice(&s.as_bytes()[p + 6..]);
            black_box(checksum(&out));
            black_box(out);
        });
        each("a full UTF-8 check", n, || {
            black_box(std::str::from_utf8(black_box(t.as_bytes())).unwrap());
        });
        each("a copy of the state", n, || {
            black_box(black_box(&t).clone());
        });
    }
}
