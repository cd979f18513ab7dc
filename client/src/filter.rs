//! What a subject may do an action on, evaluated locally:
//! [`Client::lookup_resources`] and [`ResourceFilter::matches`].
//!
//! A service listing documents asks once for the filter and tests each
//! document against it, instead of one check per document.

use std::future::IntoFuture;

use crate::check::Consistency;
use crate::{Client, Error, pb};

/// Whether a resource is allowed by a [`ResourceFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
    /// Depends on CEL conditions the filter cannot evaluate (they read the
    /// request context): check the resource with [`Client::check`].
    Conditional,
}

/// One rule: a resource matches when it matches one of the binding's scope
/// patterns and one of the statement's resource patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub scope: Vec<String>,
    pub resources: Vec<String>,
    /// CEL conditions that must also hold, the binding's first.
    pub conditions: Vec<String>,
    pub binding_id: String,
    pub role: String,
    pub sid: String,
    pub index: u32,
}

impl Rule {
    fn from_pb(r: pb::ResourceRule) -> Rule {
        Rule {
            scope: r.scope,
            resources: r.resources,
            conditions: r.conditions,
            binding_id: r.binding_id,
            role: r.role,
            sid: r.sid,
            index: r.index,
        }
    }

    pub fn matches(&self, resource: &str) -> bool {
        any_matches(&self.scope, resource) && any_matches(&self.resources, resource)
    }
}

/// An empty list is `*`, as the server writes it.
fn any_matches(patterns: &[String], resource: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| pattern_matches(p, resource))
}

/// The answer of LookupResources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceFilter {
    /// The tenant or an ancestor is suspended: nothing is allowed.
    pub suspended: bool,
    pub grants: Vec<Rule>,
    pub denials: Vec<Rule>,
    pub conditional_grants: Vec<Rule>,
    pub conditional_denials: Vec<Rule>,
    pub checked_at: String,
}

impl ResourceFilter {
    pub fn from_pb(r: pb::LookupResourcesResponse) -> ResourceFilter {
        let rules = |v: Vec<pb::ResourceRule>| v.into_iter().map(Rule::from_pb).collect();
        ResourceFilter {
            suspended: r.suspended,
            grants: rules(r.grants),
            denials: rules(r.denials),
            conditional_grants: rules(r.conditional_grants),
            conditional_denials: rules(r.conditional_denials),
            checked_at: r.checked_at,
        }
    }

    /// What a check of `resource` would answer, as the server decides:
    /// deny wins, and a condition the filter cannot evaluate leaves the
    /// answer [`Access::Conditional`] rather than guessing.
    pub fn matches(&self, resource: &str) -> Access {
        let any = |rules: &[Rule]| rules.iter().any(|r| r.matches(resource));
        if self.suspended || any(&self.denials) {
            Access::Denied
        } else if any(&self.grants) {
            if any(&self.conditional_denials) {
                Access::Conditional
            } else {
                Access::Allowed
            }
        } else if any(&self.conditional_grants) {
            Access::Conditional
        } else {
            Access::Denied
        }
    }

    /// Allowed without conditions; a conditional answer is not (fail
    /// closed).
    pub fn allows(&self, resource: &str) -> bool {
        self.matches(resource) == Access::Allowed
    }
}

/// IAM-style wildcard matching, as the server matches: `*` matches any
/// sequence (`/` included), `?` one character, everything else itself,
/// case-sensitively. Linear in practice (greedy with one backtrack point).
pub fn pattern_matches(pattern: &str, input: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), input.chars().collect());
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` swallow one more character and retry.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// A resource lookup being built: `.await` it for the [`ResourceFilter`].
#[must_use = "a lookup does nothing until awaited"]
pub struct LookupResources<'a> {
    client: &'a Client,
    request: pb::LookupResourcesRequest,
    consistency: Consistency,
}

impl Client {
    /// What `subject` may do `action` on in `tenant`'s `vault`, as a filter.
    ///
    /// ```no_run
    /// # async fn run(client: portcullis_client::Client) -> Result<(), portcullis_client::Error> {
    /// let filter = client.lookup_resources("acme", "docs", "user:carol", "documents:read").await?;
    /// let docs = ["document:eng/a", "document:hr/b"];
    /// let visible: Vec<_> = docs.iter().filter(|d| filter.allows(d)).collect();
    /// # Ok(()) }
    /// ```
    pub fn lookup_resources(
        &self,
        tenant: impl Into<String>,
        vault: impl Into<String>,
        subject: impl Into<String>,
        action: impl Into<String>,
    ) -> LookupResources<'_> {
        LookupResources {
            client: self,
            request: pb::LookupResourcesRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                subject: subject.into(),
                action: action.into(),
                consistency: None,
            },
            consistency: self.consistency.clone(),
        }
    }
}

impl<'a> LookupResources<'a> {
    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }
}

impl<'a> IntoFuture for LookupResources<'a> {
    type Output = Result<ResourceFilter, Error>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let LookupResources {
            client,
            mut request,
            consistency,
        } = self;
        Box::pin(async move {
            request.consistency = consistency.to_pb(consistency.floor(client, &request.tenant));
            client
                .permission_call(&request, None, |mut c, r| async move { c.lookup_resources(r).await })
                .await
                .map(ResourceFilter::from_pb)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(scope: &[&str], resources: &[&str]) -> Rule {
        Rule {
            scope: scope.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            conditions: Vec::new(),
            binding_id: "b".into(),
            role: "r".into(),
            sid: String::new(),
            index: 0,
        }
    }

    #[test]
    fn patterns_match_like_the_server() {
        assert!(pattern_matches("*", ""));
        assert!(pattern_matches("doc:*", "doc:a/b"));
        assert!(pattern_matches("doc:?", "doc:é"));
        assert!(!pattern_matches("doc:?", "doc:ab"));
        assert!(pattern_matches("a*b*c", "aXbYbc"));
        assert!(!pattern_matches("a*b*c", "aXbYb"));
        assert!(!pattern_matches("Doc:*", "doc:a"));
        assert!(pattern_matches("**", "x"));
        assert!(pattern_matches("", ""));
        assert!(!pattern_matches("", "x"));
    }

    #[test]
    fn deny_wins_and_conditions_are_not_guessed() {
        let f = ResourceFilter {
            grants: vec![rule(&["document:eng/*"], &["document:*"])],
            denials: vec![rule(&[], &["document:eng/secret*"])],
            conditional_grants: vec![rule(&["*"], &["document:hr/*"])],
            conditional_denials: vec![rule(&["*"], &["document:eng/draft*"])],
            ..Default::default()
        };
        assert_eq!(f.matches("document:eng/a"), Access::Allowed);
        assert_eq!(f.matches("document:eng/secret-1"), Access::Denied);
        assert_eq!(f.matches("document:eng/draft-1"), Access::Conditional);
        assert_eq!(f.matches("document:hr/x"), Access::Conditional);
        assert!(!f.allows("document:hr/x"));
        assert_eq!(f.matches("document:sales/x"), Access::Denied);
        let suspended = ResourceFilter { suspended: true, ..f };
        assert_eq!(suspended.matches("document:eng/a"), Access::Denied);
    }
}
