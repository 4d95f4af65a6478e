//! Random multi-byte text and random edits of it, at character bounds,
//! for the delta tests: the crate's unit tests (src/wire/delta.rs includes this
//! file) and tests/deltas.rs share them. Deterministic (xorshift).
#![allow(dead_code)]

/// A small deterministic generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces of plan-like text, one to four bytes a character.
pub const PIECES: &[&str] = &[
    "{\"wp\":",
    "47.39",
    "a",
    "é",
    "✈",
    "𝄞",
    "ß",
    ",",
    "\n    ",
    "\"名前\"",
    "]",
];

/// n random pieces.
pub fn text(r: &mut Rng, n: usize) -> String {
    (0..n).map(|_| PIECES[r.below(PIECES.len())]).collect()
}

/// The byte offset of every character of s, and its length.
fn bounds(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

/// One random edit at character bounds: an insert or a replacement by up
/// to `new` pieces, a deletion, or a block moved elsewhere; the block
/// removed is between two random characters, cut to `span` characters.
pub fn edit(r: &mut Rng, s: &str, new: usize, span: usize) -> String {
    let idx = bounds(s);
    let (a, b) = (r.below(idx.len()), r.below(idx.len()));
    let (a, b) = (a.min(b), a.max(b));
    let (x, y) = (idx[a], idx[b.min(a.saturating_add(span))]);
    match r.below(4) {
        0 => {
            let n = 1 + r.below(new);
            format!("{}{}{}", &s[..x], text(r, n), &s[x..])
        }
        1 => format!("{}{}", &s[..x], &s[y..]),
        2 => {
            let n = r.below(new);
            format!("{}{}{}", &s[..x], text(r, n), &s[y..])
        }
        _ => {
            let rest = format!("{}{}", &s[..x], &s[y..]);
            let ri = bounds(&rest);
            let z = ri[r.below(ri.len())];
            format!("{}{}{}", &rest[..z], &s[x..y], &rest[z..])
        }
    }
}

/// An edit of up to `span` characters keeping the length about the same:
/// a block moved, or deleted and as many characters of the start copied
/// to the end, or moved to the end.
pub fn large_edit(r: &mut Rng, s: &str, span: usize) -> String {
    let idx = bounds(s);
    let x = r.below(idx.len());
    let y = (x + 1 + r.below(span)).min(idx.len() - 1);
    let (x, y) = (idx[x], idx[y]);
    let rest = format!("{}{}", &s[..x], &s[y..]);
    match r.below(3) {
        0 => {
            let n = s[x..y].chars().count();
            let k = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
            format!("{rest}{}", &rest[..k])
        }
        1 => {
            let ri = bounds(&rest);
            let z = ri[r.below(ri.len())];
            format!("{}{}{}", &rest[..z], &s[x..y], &rest[z..])
        }
        _ => format!("{rest}{}", &s[x..y]),
    }
}
