//! The reasons of the `Ready` condition: what users read in `kubectl get`
//! and what the operator's retry policy follows. Their names and docs here
//! are the documentation of the CRDs' `reason` field (generated into
//! `crds/`), so the list cannot drift from the code.

use std::fmt;

/// When to look at an object again after an outcome with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// In force: the periodic resync (drift is re-applied).
    Resync,
    /// A transient state: exponential backoff per object.
    Backoff,
    /// Needs a user's change, which triggers a reconcile anyway; otherwise
    /// only the slow resync, no hot loop.
    OnChange,
}

macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $name:ident => $retry:ident,)*) => {
        /// The reason of a resource's `Ready` condition.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])+ $name,)*
        }

        impl Reason {
            /// Every reason, in documentation order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),*];

            /// The CamelCase name written to the condition.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }

            /// What the reason means, from its doc comment.
            pub fn doc(self) -> &'static str {
                match self {
                    $(Reason::$name => concat!($($doc),+).trim_ascii(),)*
                }
            }

            /// How the operator retries after it.
            pub fn retry(self) -> Retry {
                match self {
                    $(Reason::$name => Retry::$retry,)*
                }
            }
        }
    };
}

reasons! {
    /// The object is in force in Portcullis.
    Applied => Resync,
    /// The spec breaks a rule the schema cannot express; the message names the field.
    InvalidSpec => OnChange,
    /// The object's namespace is not in its Tenant's allowedNamespaces.
    NamespaceNotAllowed => OnChange,
    /// Another live resource manages the same Portcullis object.
    Conflict => OnChange,
    /// The Tenant named (or the parent Tenant) does not exist yet.
    TenantNotFound => Backoff,
    /// The Vault named does not exist yet.
    VaultNotFound => Backoff,
    /// A tenant limit (limits.max_*) or a rate limit would be exceeded.
    LimitExceeded => Backoff,
    /// The operator's API key was refused or lacks the scope or the tenant.
    Unauthorized => Backoff,
    /// Deletion waits for the resources that depend on this one.
    DependentsExist => Backoff,
    /// Portcullis could not be reached or could not serve the request now.
    ServiceUnavailable => Backoff,
}

impl Reason {
    /// The documentation of the `reason` field: every reason and its meaning.
    pub fn field_doc() -> String {
        let mut s = String::from("Why the condition has its status, one of:");
        for r in Reason::ALL {
            s.push_str(&format!(" `{}`: {}", r.as_str(), r.doc()));
        }
        s
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_documented_and_only_applied_resyncs() {
        for r in Reason::ALL {
            assert!(!r.doc().is_empty(), "{r}");
            assert!(Reason::field_doc().contains(&format!("`{r}`: {}", r.doc())));
            assert_eq!(r.retry() == Retry::Resync, *r == Reason::Applied, "{r}");
        }
    }
}
