//! Identifiers and their rules.
//!
//! Every identifier is validated where it enters the system (an API request,
//! a manifest, a stored record) and carried afterwards in a newtype that can
//! only be built through validation. The rule texts here are the ones users
//! read in error messages, so each names what is allowed, not just that
//! something is wrong.
//!
//! The parsers take any `&str` and never panic; `tests::parsers_never_panic`
//! runs them over arbitrary input.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One field that broke one rule. `field` is a path in the request
/// (`statements[2].actions[0]`), `rule` is a sentence a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldViolation {
    pub field: String,
    pub rule: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// All the violations found in one object, so a caller fixes them in one go.
/// At most [`Violations::KEPT`] are kept; beyond that only their number, so
/// a request of 100,000 bad names costs neither memory nor a huge error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<FieldViolation>, usize);

impl Violations {
    pub const KEPT: usize = 64;

    pub fn new() -> Self {
        Violations(Vec::new(), 0)
    }
    pub fn push(&mut self, field: impl Into<String>, rule: impl Into<String>) {
        if self.0.len() < Self::KEPT {
            self.0.push(FieldViolation::new(field, rule));
        } else {
            self.1 += 1;
        }
    }
    /// Adds another list's violations.
    pub fn extend(&mut self, other: Violations) {
        for f in other.0 {
            self.push(f.field, f.rule);
        }
        self.1 += other.1;
    }
    /// How many were found, kept or not.
    pub fn total(&self) -> usize {
        self.0.len() + self.1
    }
    /// Prefixes every field path (`role.` + `statements[0]`).
    pub fn prefixed(mut self, prefix: &str) -> Violations {
        for f in &mut self.0 {
            f.field = format!("{prefix}{}", f.field);
        }
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1 == 0
    }
    /// Records the error of `result` under `field`, returning the value on success.
    pub fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(rule) => {
                self.push(field, rule);
                None
            }
        }
    }
    pub fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
    pub fn single(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Violations(vec![FieldViolation::new(field, rule)], 0)
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        if self.1 > 0 {
            write!(f, "; and {} more", self.1)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

pub const MAX_TENANT_DEPTH: usize = 8;

const DNS_LABEL_RULE: &str =
    "must be a DNS label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";

/// `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    alnum(b[0]) && alnum(b[b.len() - 1]) && b.iter().all(|&c| alnum(c) || c == b'-')
}

pub fn check_dns_label(s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(format!("{DNS_LABEL_RULE}, got {}", quoted(s)))
    }
}

/// A value quoted for an error message, cut short so a megabyte of garbage
/// does not come back in the error.
pub fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

fn is_printable(c: char) -> bool {
    !c.is_control()
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $parse:path) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`; the error is the rule it broke.
            pub fn parse(s: &str) -> Result<Self, String> {
                $parse(s)?;
                Ok($name(Arc::from(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $name::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0.to_string()
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

pub fn check_tenant_id(s: &str) -> Result<(), String> {
    const RULE: &str = "must be 1 to 8 segments joined by '/', each a DNS label (1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)";
    if s.is_empty() {
        return Err(format!("{RULE}, got an empty string"));
    }
    let mut n = 0;
    for seg in s.split('/') {
        n += 1;
        if n > MAX_TENANT_DEPTH || !is_dns_label(seg) {
            return Err(format!("{RULE}, got {}", quoted(s)));
        }
    }
    Ok(())
}

string_newtype!(
    /// A tenant: a path such as `acme/eng/platform`. Its parent is the path
    /// without the last segment.
    TenantId,
    check_tenant_id
);

impl TenantId {
    pub fn parent(&self) -> Option<TenantId> {
        self.0.rfind('/').map(|i| TenantId(Arc::from(&self.0[..i])))
    }
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }
    /// This tenant, then its parent, up to the root.
    pub fn lineage(&self) -> Vec<TenantId> {
        let mut out = vec![self.clone()];
        let mut cur = self.clone();
        while let Some(p) = cur.parent() {
            out.push(p.clone());
            cur = p;
        }
        out
    }
    /// True when `self` is `other` or lies in its subtree (`acme/eng` is within `acme`,
    /// `acme2` is not).
    pub fn is_within(&self, other: &TenantId) -> bool {
        is_tenant_within(&self.0, &other.0)
    }
    pub fn root(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

/// The tenant's lineage as prefixes of its id, root first and the tenant
/// last (`acme`, `acme/eng`), without allocating: for the per-request
/// lookups of inherited settings (rate limits, decision-log sampling).
pub fn lineage_prefixes(tenant: &str) -> impl Iterator<Item = &str> {
    tenant
        .match_indices('/')
        .map(|(i, _)| i)
        .chain(std::iter::once(tenant.len()))
        .map(move |end| &tenant[..end])
}

/// Path-prefix test on raw strings, shared with API-key confinement.
pub fn is_tenant_within(tenant: &str, prefix: &str) -> bool {
    tenant == prefix
        || (tenant.len() > prefix.len() && tenant.starts_with(prefix) && tenant.as_bytes()[prefix.len()] == b'/')
}

string_newtype!(
    /// A vault's name, unique within its tenant.
    VaultName,
    check_dns_label
);

pub fn check_role_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must match [a-z0-9][a-z0-9._-]{{0,127}} (1 to 128 characters, lower case), got {}",
            quoted(s)
        ))
    }
}

string_newtype!(
    /// A role's name, unique within its scope (a tenant, or a vault).
    RoleName,
    check_role_name
);

pub const SUBJECT_RULE: &str = "must be 'type:id', type a DNS label (user, service, group, ...) and id 1 to 256 printable characters without whitespace";

pub fn check_subject(s: &str) -> Result<(), String> {
    let Some((ty, id)) = s.split_once(':') else {
        return Err(format!("{SUBJECT_RULE}, got {}", quoted(s)));
    };
    // Checks run on every request: ASCII (the common case) takes a byte loop.
    let (id_len, id_ok) = if id.is_ascii() {
        (id.len(), id.bytes().all(|b| b.is_ascii_graphic()))
    } else {
        (
            id.chars().count(),
            !id.chars().any(|c| c.is_whitespace() || !is_printable(c)),
        )
    };
    if !is_dns_label(ty) || id_len == 0 || id_len > 256 || !id_ok {
        return Err(format!("{SUBJECT_RULE}, got {}", quoted(s)));
    }
    Ok(())
}

string_newtype!(
    /// Who asks: `user:alice`, `service:billing`, `group:eng`.
    Subject,
    check_subject
);

impl Subject {
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map(|(t, _)| t).unwrap_or("")
    }
    pub fn id(&self) -> &str {
        self.0.split_once(':').map(|(_, i)| i).unwrap_or("")
    }
    pub fn is_group(&self) -> bool {
        self.kind() == "group"
    }
}

pub fn check_group(s: &str) -> Result<(), String> {
    check_subject(s)?;
    if !s.starts_with("group:") {
        return Err(format!("must be a group subject ('group:id'), got {}", quoted(s)));
    }
    Ok(())
}

fn is_action_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'/' | b'-')
}

/// An action in a request: `documents:read`.
pub fn check_action(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.contains(&b'*') || b.contains(&b'?') {
        return Err(format!(
            "must name one action; wildcards ('*', '?') belong in statement patterns, got {}",
            quoted(s)
        ));
    }
    if b.is_empty() || b.len() > 128 || !b.iter().all(|&c| is_action_char(c)) {
        return Err(format!(
            "must be 1 to 128 characters of [A-Za-z0-9_.:/-], got {}",
            quoted(s)
        ));
    }
    Ok(())
}

/// An action pattern in a statement: an action that may contain `*` and `?`.
pub fn check_action_pattern(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 128 || !b.iter().all(|&c| is_action_char(c) || c == b'*' || c == b'?') {
        return Err(format!(
            "must be 1 to 128 characters of [A-Za-z0-9_.:/-], '*' (any sequence) and '?' (one character), got {}",
            quoted(s)
        ));
    }
    Ok(())
}

/// A resource in a request: `document:reports/2026/q1.pdf`.
pub fn check_resource(s: &str) -> Result<(), String> {
    check_resource_pattern(s)?;
    if s.contains('*') {
        return Err(format!(
            "must name one resource; '*' belongs in patterns, got {}",
            quoted(s)
        ));
    }
    Ok(())
}

/// A resource pattern (statement resources, binding scopes).
pub fn check_resource_pattern(s: &str) -> Result<(), String> {
    let (n, printable) = if s.is_ascii() {
        (s.len(), !s.bytes().any(|b| b.is_ascii_control()))
    } else {
        (s.chars().count(), s.chars().all(is_printable))
    };
    if n == 0 || n > 1024 || !printable {
        return Err(format!("must be 1 to 1024 printable characters, got {}", quoted(s)));
    }
    Ok(())
}

/// A binding's id, unique within its vault (or tenant, for tenant-wide bindings).
pub fn check_binding_id(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to 128 characters of [A-Za-z0-9_.:-], starting with a letter or digit, got {}",
            quoted(s)
        ))
    }
}

/// A statement id: IAM's `Sid`.
pub fn check_sid(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > 128
        || !b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "must be 1 to 128 characters of [A-Za-z0-9_.-], got {}",
            quoted(s)
        ));
    }
    Ok(())
}

/// Label keys follow Kubernetes' shape loosely: an optional DNS prefix and a name.
pub fn check_label_key(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > 253
        || !b[0].is_ascii_alphanumeric()
        || !b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-'))
    {
        return Err(format!(
            "label keys must be 1 to 253 characters of [A-Za-z0-9_./-], starting with a letter or digit, got {}",
            quoted(s)
        ));
    }
    Ok(())
}

pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.chars().count() > 1024 || s.chars().any(|c| !is_printable(c)) {
        return Err("label values must be at most 1024 printable characters".into());
    }
    Ok(())
}

/// Free text: display names and descriptions.
pub fn check_text(s: &str, max: usize) -> Result<(), String> {
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "acme/eng/platform", "a", "0-9", "a/b/c/d/e/f/g/h"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Acme",
            "acme/",
            "/acme",
            "acme//eng",
            "-acme",
            "acme-",
            "a/b/c/d/e/f/g/h/i",
            "acme eng",
            "acme.eng",
            &"a".repeat(64),
        ] {
            let err = TenantId::parse(bad).unwrap_err();
            assert!(err.contains("DNS label"), "{bad}: {err}");
        }
        let t = TenantId::parse("acme/eng/platform").unwrap();
        assert_eq!(t.parent().unwrap().as_str(), "acme/eng");
        assert_eq!(t.depth(), 3);
        assert_eq!(
            t.lineage().iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["acme/eng/platform", "acme/eng", "acme"]
        );
        assert!(t.is_within(&TenantId::parse("acme").unwrap()));
        assert!(
            !TenantId::parse("acme2")
                .unwrap()
                .is_within(&TenantId::parse("acme").unwrap())
        );
        assert!(TenantId::parse("acme").unwrap().parent().is_none());
    }

    #[test]
    fn subjects() {
        let s = Subject::parse("user:alice@example.com").unwrap();
        assert_eq!(s.kind(), "user");
        assert_eq!(s.id(), "alice@example.com");
        assert!(Subject::parse("group:eng").unwrap().is_group());
        for bad in ["alice", "user:", ":alice", "User:alice", "user:al ice", "user:a\u{7}"] {
            let err = check_subject(bad).unwrap_err();
            assert!(err.contains("type:id"), "{bad}: {err}");
        }
        assert!(check_subject(&format!("user:{}", "x".repeat(256))).is_ok());
        assert!(check_subject(&format!("user:{}", "x".repeat(257))).is_err());
        assert!(check_group("user:alice").unwrap_err().contains("group subject"));
    }

    #[test]
    fn actions_and_resources() {
        assert!(check_action("documents:read").is_ok());
        assert!(check_action("a/b-c_d.e:f").is_ok());
        assert!(check_action("documents:*").unwrap_err().contains("wildcards"));
        assert!(check_action("").unwrap_err().contains("1 to 128"));
        assert!(check_action("doc read").unwrap_err().contains("[A-Za-z0-9_.:/-]"));
        assert!(check_action_pattern("documents:*").is_ok());
        assert!(check_action_pattern("doc?:re*d").is_ok());
        assert!(check_resource("document:reports/2026/q1.pdf").is_ok());
        assert!(check_resource("document:*").unwrap_err().contains("'*'"));
        assert!(check_resource(&"r".repeat(1025)).is_err());
        assert!(check_resource("a\nb").is_err());
        assert!(check_resource_pattern("document:reports/*").is_ok());
    }

    #[test]
    fn names() {
        assert!(check_role_name("reader").is_ok());
        assert!(check_role_name("docs.reader_v2-x").is_ok());
        assert!(check_role_name("Reader").is_err());
        assert!(check_role_name(".reader").is_err());
        assert!(check_role_name(&"r".repeat(129)).is_err());
        assert!(check_dns_label("docs").is_ok());
        assert!(check_dns_label("docs_1").unwrap_err().contains("DNS label"));
        assert!(check_binding_id("b-1").is_ok());
        assert!(check_binding_id("-b").is_err());
    }

    #[test]
    fn violations_name_field_and_rule() {
        let mut v = Violations::new();
        v.check("tenant", check_tenant_id("Bad"));
        v.check("subject", check_subject("nobody"));
        let text = v.to_string();
        assert!(text.starts_with("tenant: must be 1 to 8 segments"), "{text}");
        assert!(text.contains("; subject: must be 'type:id'"), "{text}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let err = check_subject(&"x".repeat(10_000)).unwrap_err();
        assert!(err.len() < 300, "{}", err.len());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*", b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let lossy = String::from_utf8_lossy(&b);
            for input in [s.as_str(), &*lossy] {
                let _ = TenantId::parse(input).map(|t| (t.parent(), t.lineage(), t.depth()));
                let _ = VaultName::parse(input);
                let _ = RoleName::parse(input);
                let _ = Subject::parse(input).map(|s| (s.kind().len(), s.id().len()));
                let _ = check_action(input);
                let _ = check_action_pattern(input);
                let _ = check_resource(input);
                let _ = check_binding_id(input);
                let _ = check_sid(input);
                let _ = check_label_key(input);
                let _ = check_label_value(input);
                let _ = check_text(input, 10);
            }
        }

        #[test]
        fn valid_tenants_round_trip(segs in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..=8)) {
            let s = segs.join("/");
            let t = TenantId::parse(&s).unwrap();
            prop_assert_eq!(t.depth(), segs.len());
            prop_assert_eq!(t.lineage().len(), segs.len());
        }
    }
}
