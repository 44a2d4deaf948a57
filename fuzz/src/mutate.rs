//! The stable replay's mutator: deterministic (seeded per target and round), no coverage
//! feedback. It does what libFuzzer's default mutators do, in miniature: bit flips, byte sets,
//! interesting values, inserts, deletes, duplicated and swapped ranges, splices of two corpus
//! inputs and insertions of dictionary tokens (the same `fuzz/dict/TARGET.dict` files libFuzzer
//! is given with `-dict`).

use crate::Rng;

/// Bytes that sit on boundaries: lengths 125/126/127, sign bits, NUL, CR, LF, quote.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0xff, b'\r', b'\n', b'"', b'\\', b'%', b';', b'=',
];

/// One mutated input: a corpus input (or nothing) with 1 to 4 stacked mutations.
pub fn mutate(corpus: &[Vec<u8>], dict: &[Vec<u8>], rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let mut data = if corpus.is_empty() {
        Vec::new()
    } else {
        corpus[rng.below(corpus.len())].clone()
    };
    for _ in 0..1 + rng.below(4) {
        step(&mut data, corpus, dict, rng);
    }
    data.truncate(max_len);
    data
}

fn step(data: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[Vec<u8>], rng: &mut Rng) {
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(256));
            let copy = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, copy);
        }
        6 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let keep = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(keep);
            data.extend_from_slice(&other[from..]);
        }
        7 if !dict.is_empty() => {
            let token = &dict[rng.below(dict.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, token.iter().copied());
        }
        8 if len > 1 => {
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        9 if len > 0 => data.truncate(rng.below(len)),
        _ => data.push(rng.next_u64() as u8),
    }
}

/// Parse a libFuzzer dictionary: one `"token"` per line (optionally `name=` before it), with
/// `\\`, `\"` and `\xNN` escapes; `#` comments.
pub fn parse_dict(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(start) = line.find('"') else {
            continue;
        };
        let Some(body) = line[start + 1..].strip_suffix('"') else {
            continue;
        };
        out.push(unescape(body));
    }
    out
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("");
                    if let Ok(v) = u8::from_str_radix(hex, 16) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                    out.push(b'\\');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 2;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
