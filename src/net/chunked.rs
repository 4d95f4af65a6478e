//! A decoder of HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), pure:
//! bytes in as they were read, the payload out, in any split.
//!
//! Owns: the position inside the chunked framing of one response body
//! (size line, extensions, data, the CRLF after it, trailers), carried
//! from one `push` to the next so that a read may end anywhere.
//! Never does: I/O, allocation proportional to the body (the payload is
//! handed out as slices of the input), or any reading of the payload.
//!
//! Used by the reactor's non-blocking SUBSCRIBE (`net/subscription.rs`);
//! see docs/internals/fixed-threads.md. The blocking SUBSCRIBE of
//! `follower/link.rs` still reads its stream through ureq.
//!
//! A body that breaks the framing (a size line that is not hex, data
//! where the CRLF after a chunk must be, an endless size line) is an
//! MS_ERR_PROTOCOL failure of `Kind::Garbled`: the classification ureq's
//! `Error::Protocol` gets today, so a garbled subscription is replaced at
//! once, never waited on.

use crate::error::{Error, Kind, Result, Status};

/// Longest chunk-size line, extensions included, CRLF excluded. Webdis
/// writes 1 to 8 hex digits and no extension.
const MAX_SIZE_LINE: usize = 1024;

/// Longest trailer line (a header field), CRLF excluded.
const MAX_TRAILER_LINE: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the size line: `len` bytes of it seen, `size` the value of its
    /// digits so far (a `u64`: leading zeros are free, a 17th significant
    /// digit is an error); `digits` digits, `after` true once past them
    /// (white space or an extension).
    Size {
        len: usize,
        size: u64,
        digits: usize,
        after: bool,
    },
    /// The CR of a line seen; `then` what the LF leads to.
    Lf(Then),
    /// `left` bytes of chunk data to come.
    Data { left: u64 },
    /// After the data: the CR expected.
    DataCr,
    /// After the last chunk: at the start of a trailer line or of the
    /// final CRLF.
    TrailerStart,
    /// Inside a trailer line, `len` bytes of it seen.
    Trailer { len: usize },
    /// The body is over (final CRLF read).
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// End of a size line: data of this size, or the trailers if 0.
    Chunk(u64),
    /// End of the CRLF after the data: the next size line.
    NextSize,
    /// End of a trailer line: the next one (or the final CRLF).
    TrailerStart,
    /// End of the final CRLF.
    Done,
}

const NEW_SIZE: State = State::Size {
    len: 0,
    size: 0,
    digits: 0,
    after: false,
};

/// Decodes one chunked body. See the module documentation.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

fn garbled(what: &str) -> Error {
    Error::new(
        Status::MS_ERR_PROTOCOL,
        format!("the chunked response body is malformed: {what}"),
    )
    .kinded(Kind::Garbled)
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder { state: NEW_SIZE }
    }

    /// Whether the body is over (the last chunk and its trailers read).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each run of payload bytes to `payload` in
    /// order. Returns how many bytes of `input` belong to the body: all
    /// of them, unless the body ended inside `input` (then `is_done`).
    /// Once an error is returned the decoder is in an unspecified state:
    /// the body cannot be read further.
    pub fn push(&mut self, input: &[u8], mut payload: impl FnMut(&[u8])) -> Result<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data { left } => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    payload(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(garbled("a chunk's data is longer than its size"));
                    }
                    self.state = State::Lf(Then::NextSize);
                }
                State::Lf(then) => {
                    if b != b'\n' {
                        return Err(garbled("a CR is not followed by LF"));
                    }
                    self.state = match then {
                        Then::Chunk(0) => State::TrailerStart,
                        Then::Chunk(size) => State::Data { left: size },
                        Then::NextSize => NEW_SIZE,
                        Then::TrailerStart => State::TrailerStart,
                        Then::Done => State::Done,
                    };
                }
                State::Size {
                    len,
                    size,
                    digits,
                    after,
                } => {
                    if b == b'\r' {
                        if digits == 0 {
                            return Err(garbled("a chunk-size line has no size"));
                        }
                        self.state = State::Lf(Then::Chunk(size));
                        i += 1;
                        continue;
                    }
                    if len >= MAX_SIZE_LINE {
                        return Err(garbled("a chunk-size line is too long"));
                    }
                    let len = len + 1;
                    if after {
                        // White space or an extension (`;name=value`):
                        // skipped, as long as it is text.
                        if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                            return Err(garbled("a chunk extension holds a control byte"));
                        }
                        self.state = State::Size {
                            len,
                            size,
                            digits,
                            after,
                        };
                    } else if let Some(d) = (b as char).to_digit(16) {
                        if size > u64::MAX >> 4 {
                            return Err(garbled("a chunk size is too large"));
                        }
                        self.state = State::Size {
                            len,
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                            after,
                        };
                    } else if digits > 0 && (b == b';' || b == b' ' || b == b'\t') {
                        self.state = State::Size {
                            len,
                            size,
                            digits,
                            after: true,
                        };
                    } else {
                        return Err(garbled("a chunk size is not a hexadecimal number"));
                    }
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::Lf(Then::Done)
                    } else if b == b'\n' || b < 0x20 {
                        return Err(garbled("a trailer line starts with a control byte"));
                    } else {
                        State::Trailer { len: 1 }
                    };
                }
                State::Trailer { len } => {
                    if b == b'\r' {
                        self.state = State::Lf(Then::TrailerStart);
                    } else if len >= MAX_TRAILER_LINE {
                        return Err(garbled("a trailer line is too long"));
                    } else if b == b'\n' {
                        return Err(garbled("a trailer line ends in a bare LF"));
                    } else {
                        self.state = State::Trailer { len: len + 1 };
                    }
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `body` pushed in pieces of the given lengths (the rest in
    /// one last piece); the payload, and whether the body ended, with the
    /// bytes of the input that were not part of it.
    fn decode(body: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool, usize)> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &c in cuts {
            let end = (at + c).min(body.len());
            pieces.push(&body[at..end]);
            at = end;
        }
        pieces.push(&body[at..]);
        let mut rest = 0;
        for p in pieces {
            let used = d.push(p, |s| out.extend_from_slice(s))?;
            assert!(used <= p.len());
            if used < p.len() {
                assert!(d.is_done(), "bytes left over only after the end");
            }
            rest += p.len() - used;
        }
        Ok((out, d.is_done(), rest))
    }

    /// The messages of a SUBSCRIBE stream as Webdis 0.1.9 sends them,
    /// one chunk each (the last message split over two chunks, as a long
    /// message is), sizes in lower and upper case.
    const MESSAGES: [&str; 4] = [
        "{\"SUBSCRIBE\":[\"subscribe\",\"c\",1]}",
        "{\"SUBSCRIBE\":[\"message\",\"c\",\"s 1 2\\n{\\\"a\\\":1}\"]}",
        "{\"SUBSCRIBE\":[\"message\",\"c\"\r\n",
        ",\"p x 1 y\"]}",
    ];

    /// The body (chunked) and its payload.
    fn webdis_stream() -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut payload = Vec::new();
        for (i, m) in MESSAGES.iter().enumerate() {
            let size = if i % 2 == 0 {
                format!("{:x}", m.len())
            } else {
                format!("{:X}", m.len())
            };
            body.extend_from_slice(size.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(m.as_bytes());
            body.extend_from_slice(b"\r\n");
            payload.extend_from_slice(m.as_bytes());
        }
        (body, payload)
    }

    #[test]
    fn a_webdis_stream_decodes_whole() {
        let (body, payload) = webdis_stream();
        let (out, done, rest) = decode(&body, &[]).unwrap();
        assert_eq!(out, payload);
        assert!(!done);
        assert_eq!(rest, 0);
    }

    /// Every split in two, and every split into single bytes, gives the
    /// same payload.
    #[test]
    fn every_split_gives_the_same_payload() {
        let (mut body, want) = webdis_stream();
        body.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
        for cut in 0..=body.len() {
            let (out, done, rest) = decode(&body, &[cut]).unwrap();
            assert_eq!(out, want, "cut at {cut}");
            assert!(done, "cut at {cut}");
            assert_eq!(rest, 0, "cut at {cut}");
        }
        let ones = vec![1; body.len()];
        let (out, done, _) = decode(&body, &ones).unwrap();
        assert_eq!(out, want);
        assert!(done);
        // Every split in three.
        for a in 0..body.len() {
            for b in 0..body.len() - a {
                let (out, done, _) = decode(&body, &[a, b]).unwrap();
                assert_eq!((out == want, done), (true, true), "cuts {a}, {b}");
            }
        }
    }

    #[test]
    fn extensions_and_white_space_after_the_size_are_skipped() {
        let body = b"5;name=value;x=\"q;r\"\r\nhello\r\n3 \t\r\nabc\r\n2\t;e\r\nde\r\n";
        for cut in 0..=body.len() {
            let (out, done, _) = decode(body, &[cut]).unwrap();
            assert_eq!(out, b"helloabcde", "cut at {cut}");
            assert!(!done);
        }
    }

    #[test]
    fn the_last_chunk_ends_the_body_and_what_follows_is_left() {
        let body = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        let (out, done, rest) = decode(body, &[]).unwrap();
        assert_eq!((out.as_slice(), done, rest), (&b"abc"[..], true, 17));
        // With trailers, each split.
        let body = b"3\r\nabc\r\n0;ext\r\nA: 1\r\nB-Field: two\r\n\r\nX";
        for cut in 0..=body.len() {
            let (out, done, rest) = decode(body, &[cut]).unwrap();
            assert_eq!(
                (out.as_slice(), done, rest),
                (&b"abc"[..], true, 1),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn sizes_in_either_case_and_with_leading_zeros() {
        let mut body = b"00000A\r\n0123456789\r\nf\r\n".to_vec();
        body.extend_from_slice(&[b'x'; 15]);
        body.extend_from_slice(b"\r\n");
        let (out, _, _) = decode(&body, &[]).unwrap();
        assert_eq!(out.len(), 25);
        assert!(out.starts_with(b"0123456789x"));
    }

    fn garbles(body: &[u8]) -> Error {
        for cut in 0..=body.len() {
            match decode(body, &[cut]) {
                Err(e) => {
                    assert_eq!(e.status, Status::MS_ERR_PROTOCOL, "{body:?}");
                    assert_eq!(e.kind, Kind::Garbled, "{body:?}");
                }
                Ok(r) => panic!(
                    "{:?} cut at {cut}: decoded {r:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
        decode(body, &[]).unwrap_err()
    }

    /// What tests/common/faults.rs' GarbleChunk does to a Webdis stream:
    /// a size line replaced by `zz`, its data following.
    #[test]
    fn a_size_that_is_not_hex_is_garbled() {
        let mut body = format!("{:x}\r\n{}\r\n", MESSAGES[0].len(), MESSAGES[0]).into_bytes();
        body.extend_from_slice(format!("zz\r\n{}\r\n", MESSAGES[1]).as_bytes());
        let e = garbles(&body);
        assert!(e.message.contains("not a hexadecimal"), "{}", e.message);
        garbles(b"0x10\r\n");
        garbles(b"-1\r\n");
        garbles(b"\r\n");
        garbles(b";ext\r\n");
        garbles(b" 5\r\n");
        garbles(b"{\"SUBSCRIBE\"");
        garbles(b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn data_where_the_crlf_must_be_is_garbled() {
        garbles(b"3\r\nabcd\r\n");
        garbles(b"3\r\nabc\nX");
        garbles(b"3\r\nabc\r\r");
        garbles(b"3\rX");
        garbles(b"3\n");
    }

    #[test]
    fn bare_lf_and_control_bytes_are_garbled() {
        garbles(b"3;a\nb\r\n");
        garbles(b"3;a\x00\r\n");
        garbles(b"0\r\nA: 1\nB\r\n\r\n");
        garbles(b"0\r\n\x01\r\n\r\n");
        garbles(b"0\r\n\n");
    }

    #[test]
    fn endless_lines_and_huge_sizes_are_garbled() {
        let e = garbles(b"11111111111111111\r\n");
        assert!(e.message.contains("too large"), "{}", e.message);
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE));
        line.extend_from_slice(b"\r\n");
        assert!(decode(&line, &[]).unwrap_err().message.contains("too long"));
        let mut trailer = b"0\r\n".to_vec();
        trailer.extend(std::iter::repeat_n(b'a', MAX_TRAILER_LINE + 1));
        trailer.extend_from_slice(b"\r\n\r\n");
        assert!(decode(&trailer, &[])
            .unwrap_err()
            .message
            .contains("too long"));
        // The longest allowed pass.
        let mut ok = b"1;".to_vec();
        ok.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE - 2));
        ok.extend_from_slice(b"\r\nz\r\n");
        assert_eq!(decode(&ok, &[]).unwrap().0, b"z");
        let (out, _, _) = decode(b"ffffffffffffffff\r\nab", &[]).unwrap();
        assert_eq!(out, b"ab");
        let (out, _, _) = decode(b"00000000000000000000002\r\nab\r\n", &[]).unwrap();
        assert_eq!(out, b"ab");
    }

    /// Random bytes never panic; random cuts of valid bodies with random
    /// chunk sizes always decode whole.
    #[test]
    fn fuzz() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEFxz;= \t\r\n\x00";
        for _ in 0..20_000 {
            let len = rnd(40) as usize;
            let junk: Vec<u8> = (0..len)
                .map(|_| ALPHABET[rnd(ALPHABET.len() as u64) as usize])
                .collect();
            let _ = decode(&junk, &[rnd(40) as usize]);
        }
        for _ in 0..2_000 {
            let payload: Vec<u8> = (0..rnd(300)).map(|_| rnd(256) as u8).collect();
            let mut body = Vec::new();
            let mut at = 0;
            while at < payload.len() {
                let n = (1 + rnd(40) as usize).min(payload.len() - at);
                body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                body.extend_from_slice(&payload[at..at + n]);
                body.extend_from_slice(b"\r\n");
                at += n;
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let cuts: Vec<usize> = (0..rnd(6)).map(|_| rnd(60) as usize).collect();
            let (out, done, rest) = decode(&body, &cuts).unwrap();
            assert_eq!((out, done, rest), (payload, true, 0));
        }
    }
}
