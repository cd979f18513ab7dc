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
//! ```
//!
//! Only the SHA-256 of each secret is stored. A presented secret is hashed
//! and compared with every key in constant time, so neither timing nor early
//! exit tells which keys exist.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::engine::ids::is_tenant_within;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Check,
    Admin,
    Watch,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Check => "check",
            Scope::Admin => "admin",
            Scope::Watch => "watch",
        }
    }
}

#[derive(Debug, Deserialize)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    tenants: Vec<String>,
}

#[derive(Debug, Clone)]
struct Key {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    tenants: Vec<String>,
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

    /// PERMISSION_DENIED unless `tenant` is within the key's subtrees.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), Status> {
        if self.tenants.is_empty() || self.tenants.iter().any(|p| is_tenant_within(tenant, p)) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "API key {} is confined to tenants {} and cannot act on tenant {tenant:?}",
                self.name,
                self.tenants.join(", ")
            )))
        }
    }
}

/// The configured keys; `None` when the server runs unauthenticated.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Option<Arc<[Key]>>,
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
        Keys { keys: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.keys.is_some()
    }

    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeysError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Keys::parse(&text).map_err(|error| KeysError::Parse {
            path: path.display().to_string(),
            error,
        })
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        let file: KeyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        for (i, k) in file.keys.into_iter().enumerate() {
            let raw = hex::decode(k.sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| format!("keys[{i}].sha256: must be 64 hex digits (the SHA-256 of the secret)"))?;
            if k.scopes.is_empty() {
                return Err(format!("keys[{i}].scopes: list at least one of check, admin, watch"));
            }
            for (j, t) in k.tenants.iter().enumerate() {
                crate::engine::ids::check_tenant_id(t).map_err(|rule| format!("keys[{i}].tenants[{j}]: {rule}"))?;
            }
            keys.push(Key {
                name: k.name,
                hash: raw,
                scopes: k.scopes,
                tenants: k.tenants,
            });
        }
        if keys.is_empty() {
            return Err("keys: list at least one key".into());
        }
        Ok(Keys {
            keys: Some(keys.into()),
        })
    }

    /// The SHA-256 of a secret, as the keys file wants it.
    pub fn hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }

    fn authenticate(&self, secret: &str) -> Option<&Key> {
        let keys = self.keys.as_deref()?;
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
        if !self.is_enabled() {
            return Ok(Caller::anonymous());
        }
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing API key: send 'authorization: Bearer <key>'"))?;
        let value = header
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("the authorization header must be 'Bearer <key>'"))?;
        let key = self
            .authenticate(secret.trim())
            .ok_or_else(|| Status::unauthenticated("unknown API key"))?;
        if let Some(scope) = scope
            && !key.scopes.contains(&scope)
        {
            return Err(Status::permission_denied(format!(
                "API key {} lacks the {} scope this service requires",
                key.name,
                scope.name()
            )));
        }
        Ok(Caller {
            name: key.name.as_str().into(),
            tenants: key.tenants.clone().into(),
        })
    }
}

/// The caller the interceptor attached.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a handler without authentication"))
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
        assert!(denied.message().contains("admin scope"));
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
}
