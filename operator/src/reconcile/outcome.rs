//! What a reconcile concluded, and what it writes back: the `Ready`
//! condition (following the API conventions: reason, message,
//! `observedGeneration`, a `lastTransitionTime` that moves only when the
//! status or reason does), an event when the state changed, and when to
//! look again.
//!
//! The status and the event are computed by plain functions
//! ([`next_status`], [`event_for`]) so they are tested without a cluster.

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use portcullis_client::Reason as ServiceReason;

use super::{Ctx, Error, Kind, key};
use crate::crd::{Condition, Status};
use crate::reason::Reason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub message: String,
    /// The Portcullis revision of what is in force.
    pub revision: Option<String>,
    /// Whether anything was written to Portcullis.
    pub changed: bool,
}

impl Outcome {
    pub fn ready(revision: String, changed: bool, message: String) -> Outcome {
        Outcome {
            reason: Reason::Applied,
            message,
            revision: Some(revision),
            changed,
        }
    }

    pub fn not_ready(reason: Reason, message: impl Into<String>) -> Outcome {
        Outcome {
            reason,
            message: message.into(),
            revision: None,
            changed: false,
        }
    }

    /// A spec the service would refuse: every violation, with its path.
    pub fn invalid(v: &portcullis::engine::Violations) -> Outcome {
        Outcome::not_ready(Reason::InvalidSpec, v.to_string())
    }

    pub fn is_ready(&self) -> bool {
        self.reason == Reason::Applied
    }

    /// Classifies a refused call by the service's `ErrorInfo` reason (never
    /// its message: a missing vault's message names its tenant too).
    pub fn from_error(e: &portcullis_client::Error, what: &str) -> Outcome {
        Outcome::from_error_renaming(e, what, |f| f.to_string())
    }

    /// [`Outcome::from_error`], with the request's field paths in the
    /// violations renamed to the resource's (`upserts[3]` is
    /// `spec.bindings[3]`).
    pub fn from_error_renaming(e: &portcullis_client::Error, what: &str, rename: impl Fn(&str) -> String) -> Outcome {
        if e.is_unavailable() || e.code() == tonic::Code::Aborted {
            return Outcome::not_ready(
                Reason::ServiceUnavailable,
                format!("Portcullis is unreachable: {}", e.message()),
            );
        }
        let reason = match e.reason() {
            ServiceReason::InvalidArgument | ServiceReason::MalformedRequest => Reason::InvalidSpec,
            ServiceReason::TenantNotFound => Reason::TenantNotFound,
            ServiceReason::VaultNotFound => Reason::VaultNotFound,
            ServiceReason::LimitExceeded | ServiceReason::RateLimited => Reason::LimitExceeded,
            ServiceReason::Unauthenticated
            | ServiceReason::ScopeMissing
            | ServiceReason::TenantOutsideKey
            | ServiceReason::ConfinementRoot => Reason::Unauthorized,
            ServiceReason::DependentsExist => Reason::DependentsExist,
            _ => Reason::ServiceUnavailable,
        };
        let detail = if e.violations().is_empty() {
            e.message().to_string()
        } else {
            let list: Vec<String> = e
                .violations()
                .iter()
                .map(|v| format!("{}: {}", rename(&v.field), v.description))
                .collect();
            format!("invalid request: {}", list.join("; "))
        };
        Outcome::not_ready(reason, format!("{what}: {detail}"))
    }
}

/// The status an object gets for `outcome`. The `Ready` condition keeps
/// its transition time while its status and reason stay; the revision is
/// kept from before when the outcome has none.
pub fn next_status(
    previous: Option<&Status>,
    generation: Option<i64>,
    outcome: &Outcome,
    extra: Option<String>,
    now: &str,
) -> Status {
    let ready = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let status_word = if outcome.is_ready() { "True" } else { "False" };
    let transition = match ready {
        Some(p) if p.status == status_word && p.reason == outcome.reason.as_str() => p.last_transition_time.clone(),
        _ => now.to_string(),
    };
    Status {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status_word.into(),
            reason: outcome.reason.as_str().into(),
            message: outcome.message.clone(),
            last_transition_time: transition,
            observed_generation: generation,
        }],
        revision: outcome
            .revision
            .clone()
            .or_else(|| previous.and_then(|s| s.revision.clone())),
        tenant_id: extra,
    }
}

/// The event to publish for `outcome`: `Applied` when something was
/// written or the state changed, a warning named by the reason when the
/// state changed to not ready, nothing when nothing changed.
pub fn event_for(previous: Option<&Condition>, outcome: &Outcome) -> Option<Event> {
    let changed_state = previous.is_none_or(|p| {
        p.status != if outcome.is_ready() { "True" } else { "False" }
            || p.reason != outcome.reason.as_str()
            || p.message != outcome.message
    });
    if outcome.is_ready() && (outcome.changed || changed_state) {
        Some(Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(outcome.message.clone()),
            action: "Apply".into(),
            secondary: None,
        })
    } else if !outcome.is_ready() && changed_state {
        Some(Event {
            type_: EventType::Warning,
            reason: outcome.reason.as_str().into(),
            note: Some(outcome.message.chars().take(1000).collect()),
            action: "Refuse".into(),
            secondary: None,
        })
    } else {
        None
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Writes the status (when it changed), publishes the event, counts a
/// not-ready outcome, and says when to look again.
pub async fn finish<K: Kind>(
    ctx: &Ctx,
    obj: &K,
    status_api: &Api<K>,
    outcome: Outcome,
    extra: Option<String>,
) -> Result<Action, Error> {
    let previous = obj.status();
    let status = next_status(previous, obj.meta().generation, &outcome, extra, &now_rfc3339());
    if previous != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        status_api
            .patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let previous_ready = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    if let Some(ev) = event_for(previous_ready, &outcome) {
        publish(ctx, &ev, obj).await;
    }
    if !outcome.is_ready() {
        ctx.metrics
            .errors
            .with_label_values(&[K::KIND, outcome.reason.as_str()])
            .inc();
    }
    Ok(ctx.requeue(&key(obj), outcome.reason))
}

/// Publishes an event about `obj`. API servers before 1.22 reject events
/// about cluster-scoped objects unless the reference carries the event's
/// namespace, so a refused event is retried that way.
pub async fn publish<K: Kind>(ctx: &Ctx, ev: &Event, obj: &K) {
    let mut reference = obj.object_ref(&());
    let first = ctx.recorder.publish(ev, &reference).await;
    let result = match first {
        Err(kube::Error::Api(ref s)) if s.code == 422 && reference.namespace.is_none() => {
            reference.namespace = Some("default".into());
            ctx.recorder.publish(ev, &reference).await
        }
        other => other,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

pub async fn publish_deleted<K: Kind>(ctx: &Ctx, obj: &K, what: String) {
    let ev = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(what),
        action: "Delete".into(),
        secondary: None,
    };
    publish(ctx, &ev, obj).await;
}
