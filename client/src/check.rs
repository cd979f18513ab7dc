//! Typed permission checks: [`Client::check`] and [`Client::check_bulk`].

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use crate::cache::CacheKey;
use crate::freshness::{revision_of, token_of};
use crate::{Client, Error, pb};

/// How fresh an answer must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Whatever the replica's index holds now: the fastest, and what most
    /// checks want.
    #[default]
    MinimizeLatency,
    /// At least as fresh as the newest write this client made to the
    /// check's tenant or one of its ancestors (the client remembers the
    /// tokens its writes returned); [`Consistency::MinimizeLatency`] when it
    /// made none.
    ReadYourWrites,
    /// At least as fresh as this revision token (a write's `written_at`,
    /// passed along by whoever made the write).
    AtLeastAsFresh(String),
    /// The store's current revision: always a round trip to the store, and
    /// never answered from the decision cache.
    FullyConsistent,
}

impl Consistency {
    /// The revision the answer must be at least as fresh as, when known.
    pub(crate) fn floor(&self, client: &Client, tenant: &str) -> Option<u64> {
        match self {
            Consistency::MinimizeLatency | Consistency::FullyConsistent => None,
            Consistency::ReadYourWrites => client.freshness.needed(tenant),
            Consistency::AtLeastAsFresh(t) => revision_of(t),
        }
    }

    pub(crate) fn to_pb(&self, floor: Option<u64>) -> Option<pb::Consistency> {
        use pb::consistency::Requirement;
        let requirement = match (self, floor) {
            (Consistency::FullyConsistent, _) => Requirement::FullyConsistent(true),
            // A token this client cannot read is still the server's to judge.
            (Consistency::AtLeastAsFresh(t), None) => Requirement::AtLeastAsFresh(t.clone()),
            (_, Some(r)) => Requirement::AtLeastAsFresh(token_of(r)),
            (_, None) => return None,
        };
        Some(pb::Consistency {
            requirement: Some(requirement),
        })
    }
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: pb::Reason,
    /// The revision token the answer was evaluated at.
    pub checked_at: String,
    /// Why, when the check asked for [`Check::explain`].
    pub explanation: Option<pb::Explanation>,
    /// Answered by the client's decision cache, not the server.
    pub cached: bool,
}

impl Decision {
    pub(crate) fn from_pb(r: pb::CheckPermissionResponse) -> Decision {
        Decision {
            allowed: r.decision == pb::Decision::Allowed as i32,
            reason: pb::Reason::try_from(r.reason).unwrap_or(pb::Reason::Unspecified),
            checked_at: r.checked_at,
            explanation: r.explanation,
            cached: false,
        }
    }
}

/// A check being built: set what you need, then `.await` it.
///
/// ```no_run
/// # async fn run(client: portcullis_client::Client) -> Result<(), portcullis_client::Error> {
/// use portcullis_client::Consistency;
/// let d = client
///     .check("acme/eng", "docs", "user:carol", "documents:read", "document:design.md")
///     .context_json(serde_json::json!({ "mfa": true }))?
///     .consistency(Consistency::ReadYourWrites)
///     .await?;
/// if !d.allowed {
///     println!("denied: {:?}", d.reason);
/// }
/// # Ok(()) }
/// ```
#[must_use = "a check does nothing until awaited"]
pub struct Check<'a> {
    client: &'a Client,
    request: pb::CheckPermissionRequest,
    consistency: Consistency,
    timeout: Option<Duration>,
}

impl Client {
    /// May `subject` do `action` on `resource` in `tenant`'s `vault`?
    pub fn check<'a>(
        &'a self,
        tenant: impl Into<String>,
        vault: impl Into<String>,
        subject: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Check<'a> {
        Check {
            client: self,
            request: pb::CheckPermissionRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                subject: subject.into(),
                action: action.into(),
                resource: resource.into(),
                ..Default::default()
            },
            consistency: self.consistency.clone(),
            timeout: None,
        }
    }

    /// Up to 1,000 checks in one vault, answered (or refused) one by one.
    pub fn check_bulk(&self, tenant: impl Into<String>, vault: impl Into<String>) -> CheckBulk<'_> {
        CheckBulk {
            client: self,
            request: pb::CheckBulkPermissionsRequest {
                tenant: tenant.into(),
                vault: vault.into(),
                ..Default::default()
            },
            consistency: self.consistency.clone(),
        }
    }

    async fn run_check(
        &self,
        mut request: pb::CheckPermissionRequest,
        consistency: Consistency,
        timeout: Option<Duration>,
    ) -> Result<Decision, Error> {
        let floor = consistency.floor(self, &request.tenant);
        request.consistency = consistency.to_pb(floor);
        // An explanation is never cached, nor an answer that must come from
        // the store, nor one against a token the client cannot read.
        let unreadable = matches!(&consistency, Consistency::AtLeastAsFresh(_)) && floor.is_none();
        let cache = self
            .cache
            .as_ref()
            .filter(|_| !request.explain && consistency != Consistency::FullyConsistent && !unreadable);
        let key = cache.map(|_| CacheKey::of(&request));
        if let (Some(c), Some(k)) = (cache, &key)
            && let Some(d) = c.get(k, floor)
        {
            return Ok(d);
        }
        let d = self
            .permission_call(&request, timeout, |mut c, r| async move { c.check_permission(r).await })
            .await
            .map(Decision::from_pb)?;
        if let (Some(c), Some(k)) = (cache, key) {
            c.put(k, &d);
        }
        Ok(d)
    }
}

impl<'a> Check<'a> {
    /// The request context conditions read (`context.*` in CEL).
    pub fn context(mut self, context: prost_types::Struct) -> Self {
        self.request.context = Some(context);
        self
    }

    /// [`Check::context`] from a JSON object; anything else is a
    /// [`crate::Reason::Config`] error.
    pub fn context_json(self, context: serde_json::Value) -> Result<Self, Error> {
        match context {
            serde_json::Value::Object(m) => Ok(self.context(crate::json::to_struct(&m))),
            _ => Err(Error::config("the check context must be a JSON object")),
        }
    }

    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    /// Ask for the statements that decided (never cached).
    pub fn explain(mut self, explain: bool) -> Self {
        self.request.explain = explain;
        self
    }

    /// The deadline of this call, beside the client's.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<'a> IntoFuture for Check<'a> {
    type Output = Result<Decision, Error>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.client.run_check(self.request, self.consistency, self.timeout))
    }
}

/// A bulk check being built: add items, then `.await` it.
#[must_use = "a bulk check does nothing until awaited"]
pub struct CheckBulk<'a> {
    client: &'a Client,
    request: pb::CheckBulkPermissionsRequest,
    consistency: Consistency,
}

impl<'a> CheckBulk<'a> {
    pub fn item(mut self, subject: impl Into<String>, action: impl Into<String>, resource: impl Into<String>) -> Self {
        self.request.items.push(pb::BulkCheckItem {
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            context: None,
        });
        self
    }

    /// An item with a request context.
    pub fn item_with_context(
        mut self,
        subject: impl Into<String>,
        action: impl Into<String>,
        resource: impl Into<String>,
        context: prost_types::Struct,
    ) -> Self {
        self = self.item(subject, action, resource);
        if let Some(last) = self.request.items.last_mut() {
            last.context = Some(context);
        }
        self
    }

    pub fn consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    pub fn explain(mut self, explain: bool) -> Self {
        self.request.explain = explain;
        self
    }
}

/// One item of a bulk check: its decision, or why the server refused it
/// (with the field paths of the item, e.g. `items[3].subject`).
pub type BulkResult = Result<Decision, pb::ItemError>;

impl<'a> IntoFuture for CheckBulk<'a> {
    type Output = Result<Vec<BulkResult>, Error>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let CheckBulk {
            client,
            mut request,
            consistency,
        } = self;
        Box::pin(async move {
            request.consistency = consistency.to_pb(consistency.floor(client, &request.tenant));
            let resp = client.check_bulk_permissions(request).await?;
            Ok(resp
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(pb::bulk_check_result::Result::Response(d)) => Ok(Decision::from_pb(d)),
                    Some(pb::bulk_check_result::Result::Error(e)) => Err(e),
                    None => Err(pb::ItemError {
                        code: tonic::Code::Internal as i32,
                        message: "the server sent an empty result".into(),
                        violations: Vec::new(),
                    }),
                })
                .collect())
        })
    }
}
