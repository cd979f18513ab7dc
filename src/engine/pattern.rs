//! IAM-style wildcard patterns: `*` matches any sequence (`/` included), `?`
//! matches one character; everything else matches itself, case-sensitively.
//!
//! Patterns are sorted by shape when compiled so the check path does the
//! cheapest test that can decide: `*` alone matches everything, a pattern
//! without wildcards is an equality test, `prefix*` a prefix test, and only
//! the rest run the general matcher, which is linear in practice (greedy with
//! one backtrack point, no recursion) and never panics.

use hashbrown::HashSet;

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Glob(Box<str>),
}

impl Pattern {
    pub fn compile(src: &str) -> Pattern {
        let wild = |c: char| c == '*' || c == '?';
        if src == "*" || (!src.is_empty() && src.bytes().all(|b| b == b'*')) {
            Pattern::Any
        } else if !src.contains(wild) {
            Pattern::Exact(src.into())
        } else if let Some(prefix) = src.strip_suffix('*')
            && !prefix.contains(wild)
        {
            Pattern::Prefix(prefix.into())
        } else {
            Pattern::Glob(src.into())
        }
    }

    #[inline]
    pub fn matches(&self, input: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(s) => &**s == input,
            Pattern::Prefix(p) => input.starts_with(&**p),
            Pattern::Glob(g) => glob_match(g.as_bytes(), input.as_bytes()),
        }
    }

    pub fn has_wildcards(&self) -> bool {
        !matches!(self, Pattern::Exact(_))
    }

    /// The pattern as written (a prefix pattern gets its `*` back).
    pub fn source(&self) -> String {
        match self {
            Pattern::Any => "*".into(),
            Pattern::Exact(s) | Pattern::Glob(s) => s.to_string(),
            Pattern::Prefix(p) => format!("{p}*"),
        }
    }
}

#[inline]
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Wildcard match of `text` against `pat`. `?` consumes one UTF-8 character.
pub fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    t += utf8_len(text[t]);
                    p += 1;
                    continue;
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                let next = st + utf8_len(text[st]);
                star = Some((sp, next));
                p = sp + 1;
                t = next;
            }
            None => return false,
        }
    }
    // `?` may have stepped past the end on a truncated character; treat as no match.
    if t > text.len() {
        return false;
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// A literal (an exact pattern, or a prefix pattern's prefix) with its last
/// eight bytes kept as a word. Resources in one vault tend to share long
/// prefixes (`document:f`), so comparing the tail first rejects almost every
/// non-match with one load instead of a `memcmp` call.
#[derive(Debug, Clone)]
struct Lit {
    text: Box<str>,
    tail: u64,
    prefix: bool,
}

#[inline]
fn tail_word(b: &[u8], end: usize) -> u64 {
    if end >= 8 {
        u64::from_le_bytes(b[end - 8..end].try_into().expect("8 bytes"))
    } else {
        let mut w = [0u8; 8];
        w[..end].copy_from_slice(&b[..end]);
        u64::from_le_bytes(w)
    }
}

impl Lit {
    fn new(text: Box<str>, prefix: bool) -> Lit {
        let tail = tail_word(text.as_bytes(), text.len());
        Lit { text, tail, prefix }
    }

    #[inline]
    fn matches(&self, input: &[u8]) -> bool {
        let n = self.text.len();
        if self.prefix {
            input.len() >= n && tail_word(input, n) == self.tail && input[..n] == *self.text.as_bytes()
        } else {
            input.len() == n && tail_word(input, n) == self.tail && input == self.text.as_bytes()
        }
    }
}

const PREFIX_BIT: u32 = 1 << 31;
const FLAG_BIT: u32 = 1 << 30;
const ANY_LEN: u32 = u32::MAX;
const COMPLEX_LEN: u32 = u32::MAX - 1;

/// Up to two literals' lengths and tail words, inline: enough to reject
/// most non-matching sets without following a pointer. A pass is confirmed
/// with the full set.
#[derive(Debug, Clone, Copy)]
pub struct Prefilter {
    t0: u64,
    t1: u64,
    l0: u32,
    l1: u32,
}

impl Prefilter {
    pub const ANY: Prefilter = Prefilter {
        t0: 0,
        t1: 0,
        l0: ANY_LEN,
        l1: ANY_LEN,
    };
    pub const COMPLEX: Prefilter = Prefilter {
        t0: 0,
        t1: 0,
        l0: COMPLEX_LEN,
        l1: COMPLEX_LEN,
    };

    /// Sets a caller-defined flag, stored in spare bits so the filter stays
    /// 24 bytes.
    pub fn with_flag(mut self) -> Prefilter {
        if self.l0 < COMPLEX_LEN {
            self.l0 |= FLAG_BIT;
        } else {
            self.t0 = 1;
        }
        self
    }

    #[inline]
    pub fn flag(&self) -> bool {
        if self.l0 < COMPLEX_LEN {
            self.l0 & FLAG_BIT != 0
        } else {
            self.t0 == 1
        }
    }

    #[inline]
    fn one(t: u64, l: u32, b: &[u8]) -> bool {
        if l >= COMPLEX_LEN {
            return true;
        }
        let n = (l & !(PREFIX_BIT | FLAG_BIT)) as usize;
        let len_ok = if l & PREFIX_BIT != 0 {
            b.len() >= n
        } else {
            b.len() == n
        };
        len_ok && tail_word(b, n) == t
    }

    /// `false` means the set certainly does not match; `true` means it may.
    #[inline]
    pub fn may_match(&self, input: &str) -> bool {
        let b = input.as_bytes();
        Self::one(self.t0, self.l0, b) || Self::one(self.t1, self.l1, b)
    }

    /// The set matches everything; no confirmation needed.
    #[inline]
    pub fn is_any(&self) -> bool {
        self.l0 == ANY_LEN
    }
}

/// Any-of a list of patterns, sorted by shape.
///
/// 32 bytes: every binding holds one for its scope, and almost all of
/// those are one prefix or one exact resource, so the literals are a boxed
/// slice and the rare shapes (many exact resources, globs) sit behind one
/// pointer.
#[derive(Debug, Clone, Default)]
pub struct PatternSet {
    any: bool,
    lits: Box<[Lit]>,
    rare: Option<Box<Rare>>,
}

#[derive(Debug, Clone, Default)]
struct Rare {
    exact_big: Option<HashSet<Box<str>, foldhash::fast::FixedState>>,
    globs: Vec<Box<str>>,
}

const SMALL: usize = 8;

impl PatternSet {
    /// Compiles `patterns`; an empty list means `*` when `empty_is_any`.
    pub fn compile<S: AsRef<str>>(patterns: &[S], empty_is_any: bool) -> PatternSet {
        if patterns.is_empty() {
            return PatternSet {
                any: empty_is_any,
                ..Default::default()
            };
        }
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        let mut globs = Vec::new();
        for p in patterns {
            match Pattern::compile(p.as_ref()) {
                Pattern::Any => {
                    return PatternSet {
                        any: true,
                        ..Default::default()
                    };
                }
                Pattern::Exact(s) => exact.push(s),
                Pattern::Prefix(s) => prefixes.push(s),
                Pattern::Glob(s) => globs.push(s),
            }
        }
        let mut lits = Vec::new();
        let mut rare = Rare { exact_big: None, globs };
        if exact.len() > SMALL {
            rare.exact_big = Some(exact.into_iter().collect());
        } else {
            lits.extend(exact.into_iter().map(|e| Lit::new(e, false)));
        }
        // Shorter prefixes first: they are the likelier and cheaper hits.
        prefixes.sort_by_key(|p| p.len());
        prefixes.dedup();
        lits.extend(prefixes.into_iter().map(|p| Lit::new(p, true)));
        PatternSet {
            any: false,
            lits: lits.into(),
            rare: (rare.exact_big.is_some() || !rare.globs.is_empty()).then(|| Box::new(rare)),
        }
    }

    #[inline]
    pub fn matches(&self, input: &str) -> bool {
        if self.any {
            return true;
        }
        let b = input.as_bytes();
        if self.lits.iter().any(|l| l.matches(b)) {
            return true;
        }
        match &self.rare {
            None => false,
            Some(r) => {
                r.exact_big.as_ref().is_some_and(|big| big.contains(input))
                    || r.globs.iter().any(|g| glob_match(g.as_bytes(), b))
            }
        }
    }

    pub fn is_any(&self) -> bool {
        self.any
    }

    /// A compact pre-filter for this set, to be stored inline where many sets
    /// are scanned in a row; see [`Prefilter`].
    pub fn prefilter(&self) -> Prefilter {
        if self.any {
            return Prefilter::ANY;
        }
        if self.rare.is_some() || self.lits.is_empty() || self.lits.len() > 2 {
            return Prefilter::COMPLEX;
        }
        let key = |l: &Lit| (l.tail, l.text.len() as u32 | if l.prefix { PREFIX_BIT } else { 0 });
        let (t0, l0) = key(&self.lits[0]);
        let (t1, l1) = self.lits.get(1).map(key).unwrap_or((t0, l0));
        Prefilter { t0, t1, l0, l1 }
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.lits.is_empty() && self.rare.is_none()
    }

    /// The patterns, written back out (order: `*`, exact, prefixes, globs).
    pub fn sources(&self) -> Vec<String> {
        if self.any {
            return vec!["*".into()];
        }
        let mut out: Vec<String> = self
            .lits
            .iter()
            .filter(|l| !l.prefix)
            .map(|l| l.text.to_string())
            .collect();
        if let Some(big) = self.rare.as_ref().and_then(|r| r.exact_big.as_ref()) {
            let mut b: Vec<String> = big.iter().map(|s| s.to_string()).collect();
            b.sort();
            out.extend(b);
        }
        out.extend(self.lits.iter().filter(|l| l.prefix).map(|l| format!("{}*", l.text)));
        out.extend(self.rare.iter().flat_map(|r| r.globs.iter().map(|g| g.to_string())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::compile(p).matches(s)
    }

    #[test]
    fn shapes() {
        assert_eq!(Pattern::compile("*"), Pattern::Any);
        assert_eq!(Pattern::compile("**"), Pattern::Any);
        assert_eq!(Pattern::compile("a:b"), Pattern::Exact("a:b".into()));
        assert_eq!(Pattern::compile("a:*"), Pattern::Prefix("a:".into()));
        assert!(matches!(Pattern::compile("a:*:b"), Pattern::Glob(_)));
        assert!(matches!(Pattern::compile("a?*"), Pattern::Glob(_)));
        assert_eq!(Pattern::compile("a:*").source(), "a:*");
    }

    #[test]
    fn matching() {
        assert!(m("*", ""));
        assert!(m("*", "anything/at/all"));
        assert!(m("documents:read", "documents:read"));
        assert!(!m("documents:read", "documents:Read"));
        assert!(m("documents:*", "documents:read"));
        assert!(!m("documents:*", "document:read"));
        assert!(m("document:reports/*", "document:reports/2026/q1.pdf"), "* spans /");
        assert!(m("*:read", "documents:read"));
        assert!(!m("*:read", "documents:readme"));
        assert!(m("doc?:read", "docs:read"));
        assert!(!m("doc?:read", "doc:read"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaab"));
        assert!(!m("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaa"));
        assert!(m("?", "é"), "? is one character, not one byte");
        assert!(!m("??", "é"));
        assert!(m("*é?", "aéb"));
        assert!(m("f*/x", "f/y/x"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    #[test]
    fn sets() {
        let s = PatternSet::compile(
            &[
                "a",
                "b*",
                "c?d",
                "document:reports/2026/*",
                "document:reports/2026/q1.pdf",
            ],
            false,
        );
        assert!(s.matches("document:reports/2026/q2.pdf") && s.matches("document:reports/2026/q1.pdf"));
        assert!(!s.matches("document:reports/2025/q2.pdf") && !s.matches("document:reports/2026"));
        assert!(s.matches("a") && s.matches("bzz") && s.matches("cxd"));
        assert!(!s.matches("c") && !s.matches("x"));
        assert!(PatternSet::compile::<&str>(&[], true).matches("x"));
        assert!(!PatternSet::compile::<&str>(&[], false).matches("x"));
        let many: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
        let big = PatternSet::compile(&many, false);
        assert!(big.matches("r42") && !big.matches("r100"));
        assert!(PatternSet::compile(&["x", "*"], false).is_any());
    }

    #[test]
    fn prefilter_never_rejects_a_match() {
        let sets: Vec<Vec<&str>> = vec![
            vec!["document:f1/*"],
            vec!["document:f1/*", "folder:f1"],
            vec!["ab"],
            vec!["a*"],
            vec!["*"],
            vec!["a?c"],
            vec!["x", "y", "z*"],
        ];
        for set in sets {
            let ps = PatternSet::compile(&set, true);
            for flagged in [false, true] {
                let pf = if flagged {
                    ps.prefilter().with_flag()
                } else {
                    ps.prefilter()
                };
                assert_eq!(pf.flag(), flagged);
                for input in [
                    "document:f1/x",
                    "document:f10/x",
                    "folder:f1",
                    "ab",
                    "abc",
                    "a",
                    "",
                    "x",
                    "zzz",
                    "y",
                ] {
                    if ps.matches(input) {
                        assert!(pf.may_match(input) || pf.is_any(), "{set:?} {input}");
                    }
                }
            }
        }
        assert!(
            !PatternSet::compile(&["document:f1/*"], true)
                .prefilter()
                .may_match("document:f2/x")
        );
    }

    /// A slow, obviously-correct reference matcher over characters.
    fn reference(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some('*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &s[1..]),
            (Some(c), Some(d)) => c == d && reference(&p[1..], &s[1..]),
            (Some(_), None) => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab*?é/]{0,8}", s in "[abé/]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let sc: Vec<char> = s.chars().collect();
            prop_assert_eq!(Pattern::compile(&p).matches(&s), reference(&pc, &sc), "{} vs {}", p, s);
        }

        #[test]
        fn never_panics(p in "\\PC{0,40}", s in "\\PC{0,60}") {
            let _ = Pattern::compile(&p).matches(&s);
            let _ = PatternSet::compile(std::slice::from_ref(&p), true).matches(&s);
        }
    }
}
