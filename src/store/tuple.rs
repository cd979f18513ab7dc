//! Tuple encoding of keys, byte-compatible with FoundationDB's tuple layer
//! for the element types used here (byte strings, unicode strings,
//! non-negative integers and versionstamps), so the keyspace is the same on
//! every backend and ordered the same way.

/// One tuple element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    Int(u64),
    /// A complete 10-byte versionstamp plus the 2-byte user version.
    Versionstamp([u8; 12]),
}

const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT_ZERO: u8 = 0x14;
const VERSIONSTAMP: u8 = 0x33;

/// Builds a key element by element.
#[derive(Debug, Clone, Default)]
pub struct Key(pub Vec<u8>);

impl Key {
    pub fn new() -> Key {
        Key(Vec::with_capacity(64))
    }
    pub fn with_prefix(prefix: &[u8]) -> Key {
        let mut v = Vec::with_capacity(prefix.len() + 64);
        v.extend_from_slice(prefix);
        Key(v)
    }
    fn escaped(&mut self, code: u8, b: &[u8]) {
        self.0.push(code);
        for &c in b {
            self.0.push(c);
            if c == 0 {
                self.0.push(0xff);
            }
        }
        self.0.push(0);
    }
    pub fn str(mut self, s: &str) -> Key {
        self.escaped(STRING, s.as_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Key {
        self.escaped(BYTES, b);
        self
    }
    pub fn int(mut self, n: u64) -> Key {
        if n == 0 {
            self.0.push(INT_ZERO);
            return self;
        }
        let len = 8 - (n.leading_zeros() / 8) as usize;
        self.0.push(INT_ZERO + len as u8);
        self.0.extend_from_slice(&n.to_be_bytes()[8 - len..]);
        self
    }
    /// A versionstamp element still to be filled in at commit; returns the
    /// key and the offset of the 10 bytes the store replaces.
    pub fn incomplete_versionstamp(mut self) -> (Vec<u8>, usize) {
        self.0.push(VERSIONSTAMP);
        let offset = self.0.len();
        self.0.extend_from_slice(&[0xff; 10]);
        self.0.extend_from_slice(&[0, 0]);
        (self.0, offset)
    }
    pub fn versionstamp(mut self, version: u64) -> Key {
        self.0.push(VERSIONSTAMP);
        self.0.extend_from_slice(&version.to_be_bytes());
        self.0.extend_from_slice(&[0, 0, 0, 0]);
        self
    }
    /// The string element as an open prefix: matches every string that
    /// starts with `s` (no terminator).
    pub fn str_prefix(mut self, s: &str) -> Key {
        self.0.push(STRING);
        for &c in s.as_bytes() {
            self.0.push(c);
            if c == 0 {
                self.0.push(0xff);
            }
        }
        self
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// The range of every key that starts with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let begin = prefix.to_vec();
    let mut end = prefix.to_vec();
    end.push(0xff);
    (begin, end)
}

/// Decodes a tuple. `None` on malformed input.
pub fn decode(mut b: &[u8]) -> Option<Vec<Elem<'_>>> {
    let mut out = Vec::new();
    while let Some((&code, rest)) = b.split_first() {
        b = rest;
        match code {
            BYTES | STRING => {
                // Find the unescaped terminator.
                let mut i = 0;
                while i < b.len() {
                    if b[i] == 0 {
                        if b.get(i + 1) == Some(&0xff) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                let raw = &b[..i];
                b = &b[i + 1..];
                if raw.windows(2).any(|w| w == [0, 0xff]) {
                    // Escaped NULs: not used by this keyspace's identifiers.
                    return None;
                }
                if code == STRING {
                    out.push(Elem::Str(std::str::from_utf8(raw).ok()?));
                } else {
                    out.push(Elem::Bytes(raw));
                }
            }
            0x14..=0x1c => {
                let len = (code - INT_ZERO) as usize;
                if b.len() < len {
                    return None;
                }
                let mut buf = [0u8; 8];
                buf[8 - len..].copy_from_slice(&b[..len]);
                out.push(Elem::Int(u64::from_be_bytes(buf)));
                b = &b[len..];
            }
            VERSIONSTAMP => {
                if b.len() < 12 {
                    return None;
                }
                out.push(Elem::Versionstamp(b[..12].try_into().ok()?));
                b = &b[12..];
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The commit version in a versionstamp element.
pub fn versionstamp_version(vs: &[u8; 12]) -> u64 {
    u64::from_be_bytes(vs[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_fdb_encoding() {
        // Values from FoundationDB's tuple layer specification.
        assert_eq!(Key::new().str("foo").into_vec(), b"\x02foo\x00");
        assert_eq!(Key::new().bytes(b"foo\x00bar").into_vec(), b"\x01foo\x00\xffbar\x00");
        assert_eq!(Key::new().int(0).into_vec(), b"\x14");
        assert_eq!(Key::new().int(1).into_vec(), b"\x15\x01");
        assert_eq!(Key::new().int(256).into_vec(), b"\x16\x01\x00");
        assert_eq!(
            Key::new().int(u64::MAX).into_vec(),
            b"\x1c\xff\xff\xff\xff\xff\xff\xff\xff"
        );
    }

    #[test]
    fn round_trip_and_order() {
        let k = Key::new().str("pc").int(1).str("acme/eng").versionstamp(42).into_vec();
        let d = decode(&k).unwrap();
        assert_eq!(d[0], Elem::Str("pc"));
        assert_eq!(d[1], Elem::Int(1));
        assert_eq!(d[2], Elem::Str("acme/eng"));
        match &d[3] {
            Elem::Versionstamp(v) => assert_eq!(versionstamp_version(v), 42),
            other => panic!("{other:?}"),
        }
        // "acme" sorts before "acme/eng" and "acme2"; the prefix of "acme/" holds only children.
        let a = Key::new().str("acme").into_vec();
        let child = Key::new().str("acme/eng").into_vec();
        let other = Key::new().str("acme2").into_vec();
        assert!(a < child && child < other);
        let (b, e) = prefix_range(&Key::new().str_prefix("acme/").into_vec());
        assert!(child >= b && child < e);
        assert!(!(other >= b && other < e || a >= b && a < e));
        assert!(Key::new().versionstamp(9).into_vec() < Key::new().versionstamp(10).into_vec());
    }

    proptest! {
        #[test]
        fn ints_sort_like_numbers(a: u64, b: u64) {
            let ka = Key::new().int(a).into_vec();
            let kb = Key::new().int(b).into_vec();
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            prop_assert_eq!(decode(&ka).unwrap(), vec![Elem::Int(a)]);
        }

        #[test]
        fn strings_round_trip(s in "[^\\x00]{0,40}") {
            let k = Key::new().str(&s).into_vec();
            prop_assert_eq!(decode(&k).unwrap(), vec![Elem::Str(&s)]);
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&b);
        }
    }
}
