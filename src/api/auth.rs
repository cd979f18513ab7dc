//! Callers: bearer API keys from a YAML file.
//!
//! ```yaml
//! keys:
//!   - name: operator
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     scopes: [admin, check, watch]
//!   - name: docs-frontend
//!     sha256: ...
//!     scopes: [check]
//!     tenants: [acme/docs]      # confined to these subtrees
//!     rate_limit: 500           # requests per second, all RPCs together
//! ```
//!
//! Only the SHA-256 of each secret is stored. A presented secret is hashed
//! and compared with every key in constant time, so neither timing nor early
//! exit tells which keys exist.
//!
//! The file is strict: an unknown field (`tenant:` for `tenants:`) would
//! otherwise silently yield an unconfined key, so it is an error, as are two
//! keys with the same name or the same secret. The file is re-read when it
//! changes ([`Keys::reload`]); a file that fails to parse leaves the keys in
//! force as they were.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::engine::ids::is_tenant_within;
use crate::error::ServiceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Check,
    Admin,
    Watch,
    /// Reading the audit trail (AuditService).
    Audit,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Check => "check",
            Scope::Admin => "admin",
            Scope::Watch => "watch",
            Scope::Audit => "audit",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    tenants: Vec<String>,
    /// Requests per second this key may make, over all RPCs; 0 or absent
    /// means no limit.
    #[serde(default, alias = "rateLimit")]
    rate_limit: u32,
}

#[derive(Debug)]
struct Key {
    name: Arc<str>,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    tenants: Arc<[String]>,
    limiter: Option<Arc<crate::ratelimit::Limiter>>,
}

/// Who is calling, attached to each request by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    /// Tenant prefixes the key is confined to; empty means unconfined.
    tenants: Arc<[String]>,
}

impl Caller {
    /// The caller of an unauthenticated (loopback-only) server.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            tenants: Arc::new([]),
        }
    }

    pub fn is_confined(&self) -> bool {
        !self.tenants.is_empty()
    }

    pub fn confined_to(&self) -> &[String] {
        &self.tenants
    }

    /// Whether `tenant` is within the key's subtrees.
    pub fn may_act_on(&self, tenant: &str) -> bool {
        self.tenants.is_empty() || self.tenants.iter().any(|p| is_tenant_within(tenant, p))
    }

    /// PERMISSION_DENIED unless `tenant` is within the key's subtrees.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), Status> {
        self.require_field("tenant", tenant)
    }

    /// PERMISSION_DENIED unless the tenant named at `field` is within the
    /// key's subtrees. An empty field (one that defaults to the request's
    /// tenant) passes: the request's own tenant is checked on its own.
    pub fn require_field(&self, field: &str, tenant: &str) -> Result<(), Status> {
        if tenant.is_empty() || self.may_act_on(tenant) {
            Ok(())
        } else {
            Err(ServiceError::OutsideConfinement {
                key: self.name.to_string(),
                confined_to: self.tenants.join(", "),
                field: field.to_string(),
                tenant: tenant.to_string(),
            }
            .into())
        }
    }

    /// [`Caller::require_field`] for every tenant field of a request, nested
    /// objects included ([`crate::api::confine`]), before anything is read
    /// or written.
    pub fn require_all(&self, fields: &crate::api::confine::Fields<'_>) -> Result<(), Status> {
        for (field, tenant) in fields {
            self.require_field(field, tenant)?;
        }
        Ok(())
    }

    /// Whether `tenant` is the top of one of the key's subtrees: the key may
    /// manage what is inside it, but not the tenant's own status, limits or
    /// existence (an admin confined to `acme/eng` must not lift a
    /// suspension of `acme/eng` or raise its limits).
    pub fn is_confinement_root(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|p| p == tenant)
    }

    /// The confinement roots `tenant` lies in (its own subtree tops).
    pub fn roots_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tenants
            .iter()
            .filter(move |p| is_tenant_within(tenant, p))
            .map(|p| p.as_str())
    }
}

/// The configured keys; `None` when the server runs unauthenticated.
/// Clones share the set, so a reload reaches every service.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Option<Arc<KeySet>>,
    /// Without keys, a verified client certificate names the caller.
    subjects: Arc<super::peer::Subjects>,
}

#[derive(Debug)]
struct KeySet {
    path: Option<std::path::PathBuf>,
    current: arc_swap::ArcSwap<Vec<Key>>,
    /// SHA-256 of the file as last read, so an unchanged file is not re-parsed.
    seen: std::sync::Mutex<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read the API keys file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the API keys file {path} is not valid: {error}")]
    Parse { path: String, error: String },
}

impl Keys {
    pub fn none() -> Keys {
        Keys::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.keys.is_some()
    }

    fn read(path: &Path) -> Result<String, KeysError> {
        std::fs::read_to_string(path).map_err(|error| KeysError::Read {
            path: path.display().to_string(),
            error,
        })
    }

    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let text = Self::read(path)?;
        let keys = parse_keys(&text).map_err(|error| KeysError::Parse {
            path: path.display().to_string(),
            error,
        })?;
        Ok(Keys::from_set(Some(path.to_path_buf()), &text, keys))
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        Ok(Keys::from_set(None, text, parse_keys(text)?))
    }

    fn from_set(path: Option<std::path::PathBuf>, text: &str, keys: Vec<Key>) -> Keys {
        Keys {
            keys: Some(Arc::new(KeySet {
                path,
                current: arc_swap::ArcSwap::from_pointee(keys),
                seen: std::sync::Mutex::new(Sha256::digest(text.as_bytes()).into()),
            })),
            subjects: Default::default(),
        }
    }

    /// Re-reads the keys file if it changed. `Ok(true)` when the new keys are
    /// in force; on an error the keys stay as they were.
    pub fn reload(&self) -> Result<bool, KeysError> {
        let Some(set) = &self.keys else { return Ok(false) };
        let Some(path) = &set.path else { return Ok(false) };
        let text = Self::read(path)?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let mut seen = set.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == digest {
            return Ok(false);
        }
        // This content has been judged, good or bad: it is not re-parsed
        // (and re-logged) every poll.
        *seen = digest;
        let keys = parse_keys(&text).map_err(|error| KeysError::Parse {
            path: path.display().to_string(),
            error,
        })?;
        set.current.store(Arc::new(keys));
        Ok(true)
    }

    /// The SHA-256 of a secret, as the keys file wants it.
    pub fn hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    fn authenticate<'k>(keys: &'k [Key], secret: &str) -> Option<&'k Key> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found: Option<&Key> = None;
        for k in keys {
            // Every key is compared; the match is selected without branching
            // on secret data until all comparisons are done.
            let eq: bool = k.hash.ct_eq(&digest).into();
            if eq && found.is_none() {
                found = Some(k);
            }
        }
        found
    }

    /// An interceptor that lets refused calls through to the handler, with
    /// the refusal in place of the caller: [`caller`] returns it, and the
    /// handler's wrapper records it in the audit trail.
    pub fn audited_interceptor(
        &self,
        scope: Scope,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let keys = self.clone();
        move |mut req: Request<()>| {
            match keys.caller(&req, Some(scope)) {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                }
                Err(status) => {
                    let key = keys.key_name(&req);
                    req.extensions_mut().insert(Refused { status, key });
                }
            }
            Ok(req)
        }
    }

    /// The name of the key a request presents, if it is one.
    fn key_name<T>(&self, req: &Request<T>) -> Option<Arc<str>> {
        let set = self.keys.as_ref()?;
        let keys = set.current.load();
        let secret = req.metadata().get("authorization")?.to_str().ok()?;
        let secret = secret
            .strip_prefix("Bearer ")
            .or_else(|| secret.strip_prefix("bearer "))?;
        Self::authenticate(&keys, secret.trim()).map(|k| k.name.clone())
    }

    /// An interceptor for one service: authenticates and checks `scope`.
    pub fn interceptor(
        &self,
        scope: Option<Scope>,
    ) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let keys = self.clone();
        move |mut req: Request<()>| {
            let caller = keys.caller(&req, scope)?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }

    fn caller<T>(&self, req: &Request<T>, scope: Option<Scope>) -> Result<Caller, Status> {
        let Some(set) = &self.keys else {
            // No keys: the certificate mTLS verified names the caller, with
            // every scope and no confinement (the CA is the authority); a
            // loopback server without mTLS serves "anonymous".
            return Ok(match self.subjects.of(req) {
                Some(name) => Caller {
                    name,
                    tenants: Arc::new([]),
                },
                None => Caller::anonymous(),
            });
        };
        let keys = set.current.load();
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| unauthenticated("missing API key: send 'authorization: Bearer <key>'"))?;
        let value = header
            .to_str()
            .map_err(|_| unauthenticated("the authorization header is not valid text"))?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("the authorization header must be 'Bearer <key>'"))?;
        let key = Self::authenticate(&keys, secret.trim()).ok_or_else(|| unauthenticated("unknown API key"))?;
        if let Some(scope) = scope
            && !key.scopes.contains(&scope)
        {
            return Err(ServiceError::ScopeMissing {
                key: key.name.to_string(),
                scope: scope.name(),
            }
            .into());
        }
        if let Some(l) = &key.limiter {
            l.take(1).map_err(|retry| {
                Status::from(ServiceError::RateLimited {
                    limit: "rate_limit".to_string(),
                    subject: format!("API key {}", key.name),
                    per_second: l.per_second(),
                    retry_after: retry,
                })
            })?;
        }
        Ok(Caller {
            name: key.name.clone(),
            tenants: key.tenants.clone(),
        })
    }
}

fn parse_keys(text: &str) -> Result<Vec<Key>, String> {
    let file: KeyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut keys: Vec<Key> = Vec::new();
    for (i, k) in file.keys.into_iter().enumerate() {
        if k.name.trim().is_empty() {
            return Err(format!("keys[{i}].name: must not be empty"));
        }
        let raw = hex::decode(k.sha256.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("keys[{i}].sha256: must be 64 hex digits (the SHA-256 of the secret)"))?;
        if k.scopes.is_empty() {
            return Err(format!(
                "keys[{i}].scopes: list at least one of check, admin, watch, audit"
            ));
        }
        for (j, t) in k.tenants.iter().enumerate() {
            crate::engine::ids::check_tenant_id(t).map_err(|rule| format!("keys[{i}].tenants[{j}]: {rule}"))?;
        }
        if let Some(j) = keys.iter().position(|o| *o.name == *k.name) {
            return Err(format!(
                "keys[{i}].name: {:?} is already the name of keys[{j}]; names must be unique",
                k.name
            ));
        }
        if let Some(j) = keys.iter().position(|o| o.hash == raw) {
            return Err(format!(
                "keys[{i}].sha256: the same secret as keys[{j}]; every key needs its own secret"
            ));
        }
        keys.push(Key {
            name: k.name.into(),
            hash: raw,
            scopes: k.scopes,
            tenants: k.tenants.into(),
            limiter: (k.rate_limit > 0).then(|| Arc::new(crate::ratelimit::Limiter::new(k.rate_limit))),
        });
    }
    if keys.is_empty() {
        return Err("keys: list at least one key".into());
    }
    Ok(keys)
}

fn unauthenticated(why: &'static str) -> Status {
    ServiceError::Unauthenticated { why }.into()
}

/// The caller the interceptor attached.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    if let Some(r) = req.extensions().get::<Refused>() {
        return Err(r.status.clone());
    }
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ServiceError::Unwired.into())
}

/// A call the interceptor refused, passed on so it can be audited.
#[derive(Clone)]
pub struct Refused {
    pub status: Status,
    /// The key's name when the key was valid (a missing scope).
    pub key: Option<Arc<str>>,
}

/// Who made a call, for the record of a refusal: the key's name (or
/// `unauthenticated`), the peer's address and its client certificate's
/// subject under mTLS.
#[derive(Debug, Clone)]
pub struct Who {
    pub actor: String,
    pub peer: Option<std::net::SocketAddr>,
    pub certificate: Option<String>,
}

pub fn who<T>(req: &Request<T>) -> Who {
    let actor = match (req.extensions().get::<Caller>(), req.extensions().get::<Refused>()) {
        (Some(c), _) => c.name.to_string(),
        (None, Some(Refused { key: Some(k), .. })) => k.to_string(),
        _ => "unauthenticated".to_string(),
    };
    Who {
        actor,
        peer: req.remote_addr(),
        certificate: super::peer::subject_of(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let text = format!(
            "keys:\n  - name: admin\n    sha256: {}\n    scopes: [admin, check]\n  - name: acme\n    sha256: {}\n    scopes: [check]\n    tenants: [acme/eng]\n",
            Keys::hash("s3cret"),
            Keys::hash("acme-key")
        );
        Keys::parse(&text).unwrap()
    }

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn authenticates_and_scopes() {
        let k = keys();
        assert_eq!(
            k.caller(&req(None), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            k.caller(&req(Some("Bearer nope")), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            k.caller(&req(Some("Basic s3cret")), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let c = k.caller(&req(Some("Bearer s3cret")), Some(Scope::Admin)).unwrap();
        assert_eq!(&*c.name, "admin");
        let denied = k.caller(&req(Some("Bearer acme-key")), Some(Scope::Admin)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let info = tonic_types::StatusExt::get_details_error_info(&denied).expect("ErrorInfo");
        assert_eq!(info.reason, "SCOPE_MISSING");
        assert_eq!(info.metadata["scope"], "admin");
    }

    #[test]
    fn confinement_is_by_subtree() {
        let c = keys()
            .caller(&req(Some("Bearer acme-key")), Some(Scope::Check))
            .unwrap();
        assert!(c.require_tenant("acme/eng").is_ok());
        assert!(c.require_tenant("acme/eng/platform").is_ok());
        assert_eq!(
            c.require_tenant("acme").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(
            c.require_tenant("acme/engineering").is_err(),
            "a prefix of the name is not a subtree"
        );
    }

    #[test]
    fn bad_files_are_rejected_with_the_field() {
        assert!(Keys::parse("keys: []").unwrap_err().contains("at least one key"));
        let e = Keys::parse("keys:\n  - name: x\n    sha256: abc\n    scopes: [check]\n").unwrap_err();
        assert!(e.contains("keys[0].sha256"), "{e}");
        let e = Keys::parse(&format!(
            "keys:\n  - name: x\n    sha256: {}\n    scopes: [root]\n",
            Keys::hash("a")
        ))
        .unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn misspelled_fields_and_duplicates_are_rejected() {
        // `tenant:` for `tenants:` would otherwise yield an unconfined key.
        let e = Keys::parse(&format!(
            "keys:\n  - name: x\n    sha256: {}\n    scopes: [check]\n    tenant: [acme]\n",
            Keys::hash("a")
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `tenant`"), "{e}");
        let e = Keys::parse(&format!(
            "keys:\n  - name: x\n    sha256: {}\n    scopes: [check]\n  - name: x\n    sha256: {}\n    scopes: [check]\n",
            Keys::hash("a"),
            Keys::hash("b")
        ))
        .unwrap_err();
        assert!(e.contains("keys[1].name"), "{e}");
        let e = Keys::parse(&format!(
            "keys:\n  - name: x\n    sha256: {}\n    scopes: [check]\n  - name: y\n    sha256: {}\n    scopes: [admin]\n",
            Keys::hash("a"),
            Keys::hash("a")
        ))
        .unwrap_err();
        assert!(e.contains("keys[1].sha256: the same secret as keys[0]"), "{e}");
    }

    #[test]
    fn reload_swaps_keys_and_keeps_them_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let file = |secret: &str| {
            format!(
                "keys:\n  - name: k\n    sha256: {}\n    scopes: [check]\n",
                Keys::hash(secret)
            )
        };
        std::fs::write(&path, file("one")).unwrap();
        let keys = Keys::load(&path).unwrap();
        assert!(keys.caller(&req(Some("Bearer one")), None).is_ok());
        assert!(!keys.reload().unwrap(), "unchanged");
        std::fs::write(&path, file("two")).unwrap();
        assert!(keys.reload().unwrap());
        assert!(keys.caller(&req(Some("Bearer one")), None).is_err());
        assert!(keys.caller(&req(Some("Bearer two")), None).is_ok());
        std::fs::write(&path, "keys: [ { name: broken } ]").unwrap();
        assert!(keys.reload().is_err());
        assert!(
            keys.caller(&req(Some("Bearer two")), None).is_ok(),
            "a bad file keeps the old keys"
        );
    }
}
