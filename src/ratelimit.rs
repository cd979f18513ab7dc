//! Rate limits: a token bucket per API key and per tenant (a tenant's
//! bucket is shared by its whole subtree; a descendant's own limit applies
//! within it).
//!
//! Each bucket is a GCRA cell: one atomic "theoretical arrival time" and a
//! compare-and-swap per request, so the check path takes no lock. Written
//! here rather than taken from `governor` because a check must take tokens
//! from several buckets (the tenant and each limited ancestor) all or none:
//! [`Limiter::take`] can be undone with [`Limiter::give_back`], which
//! `governor` does not offer.
//!
//! Limits are enforced by each replica on its own traffic: with N replicas
//! behind a load balancer a tenant may reach N times its limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::engine::TenantId;
use crate::engine::model::Tenant;

fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A token bucket of `per_second` tokens a second and a burst of one
/// second's worth.
#[derive(Debug)]
pub struct Limiter {
    per_second: u32,
    /// Nanoseconds between tokens.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run: the burst.
    tolerance: u64,
    tat: AtomicU64,
}

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        let per_second = per_second.max(1);
        let interval = 1_000_000_000 / u64::from(per_second);
        Limiter {
            per_second,
            interval,
            tolerance: interval * u64::from(per_second),
            tat: AtomicU64::new(0),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes `n` tokens, or says how long until they would be there.
    pub fn take(&self, n: u32) -> Result<(), Duration> {
        let now = now_ns();
        let cost = self.interval.saturating_mul(u64::from(n.max(1)));
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(cost);
            if next.saturating_sub(now) > self.tolerance {
                return Err(Duration::from_nanos(next - now - self.tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Returns `n` tokens taken by [`Limiter::take`] for a request that was
    /// refused by another bucket after all.
    pub fn give_back(&self, n: u32) {
        let cost = self.interval.saturating_mul(u64::from(n.max(1)));
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| Some(t.saturating_sub(cost)));
    }
}

/// Which of a tenant's limits a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checks,
    Writes,
}

impl Kind {
    /// The limit's field name, as an `ErrorInfo` names it.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Checks => "limits.max_checks_per_second",
            Kind::Writes => "limits.max_writes_per_second",
        }
    }
}

#[derive(Default)]
struct Buckets {
    checks: HashMap<TenantId, Arc<Limiter>>,
    writes: HashMap<TenantId, Arc<Limiter>>,
}

/// A refused request: which tenant's limit, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub tenant: TenantId,
    pub kind: Kind,
    pub per_second: u32,
    pub retry_after: Duration,
}

/// The tenants' buckets, rebuilt when a tenant's limits change (buckets of
/// unchanged limits are kept, with their state).
#[derive(Default)]
pub struct TenantLimits {
    buckets: ArcSwap<Buckets>,
}

impl TenantLimits {
    /// Replaces the set of limits; called with every tenant whenever one
    /// changes.
    pub fn update<'a>(&self, tenants: impl IntoIterator<Item = &'a Tenant>) {
        let old = self.buckets.load();
        let mut new = Buckets::default();
        for t in tenants {
            for (kind, limit, map, old_map) in [
                (
                    Kind::Checks,
                    t.limits.max_checks_per_second,
                    &mut new.checks,
                    &old.checks,
                ),
                (
                    Kind::Writes,
                    t.limits.max_writes_per_second,
                    &mut new.writes,
                    &old.writes,
                ),
            ] {
                let _ = kind;
                if limit == 0 {
                    continue;
                }
                let l = match old_map.get(&t.id) {
                    Some(l) if l.per_second() == limit => l.clone(),
                    _ => Arc::new(Limiter::new(limit)),
                };
                map.insert(t.id.clone(), l);
            }
        }
        self.buckets.store(Arc::new(new));
    }

    /// Takes `n` tokens from `tenant`'s bucket and every limited
    /// ancestor's, all or none.
    pub fn take(&self, tenant: &str, kind: Kind, n: u32) -> Result<(), Refused> {
        let b = self.buckets.load();
        let map = match kind {
            Kind::Checks => &b.checks,
            Kind::Writes => &b.writes,
        };
        if map.is_empty() {
            return Ok(());
        }
        let mut taken: smallvec::SmallVec<[&Arc<Limiter>; 8]> = smallvec::SmallVec::new();
        // The tenant and each ancestor.
        for prefix in crate::engine::ids::lineage_prefixes(tenant) {
            let Some((id, l)) = map.get_key_value(prefix) else {
                continue;
            };
            if let Err(retry_after) = l.take(n) {
                for t in taken {
                    t.give_back(n);
                }
                return Err(Refused {
                    tenant: id.clone(),
                    kind,
                    per_second: l.per_second(),
                    retry_after,
                });
            }
            taken.push(l);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses() {
        let l = Limiter::new(10);
        for _ in 0..10 {
            l.take(1).unwrap();
        }
        let wait = l.take(1).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        l.give_back(1);
        assert!(l.take(1).is_ok(), "a returned token can be taken again");
    }

    #[test]
    fn subtree_buckets_are_shared_and_all_or_none() {
        let t = |id: &str, checks: u32| {
            let mut t = Tenant::new(TenantId::parse(id).unwrap());
            t.limits.max_checks_per_second = checks;
            t
        };
        let limits = TenantLimits::default();
        limits.update(&[t("acme", 5), t("acme/eng", 2), t("acme/ops", 0)]);
        // acme/eng may take 2; its parent's bucket is charged too.
        limits.take("acme/eng/platform", Kind::Checks, 1).unwrap();
        limits.take("acme/eng", Kind::Checks, 1).unwrap();
        let r = limits.take("acme/eng", Kind::Checks, 1).unwrap_err();
        assert_eq!(r.tenant.as_str(), "acme/eng");
        // acme has 3 left, shared with acme/ops; the refused request above
        // gave back what it took from nothing (acme/eng refused first).
        for _ in 0..3 {
            limits.take("acme/ops", Kind::Checks, 1).unwrap();
        }
        assert_eq!(
            limits.take("acme/ops", Kind::Checks, 1).unwrap_err().tenant.as_str(),
            "acme"
        );
        assert!(limits.take("other", Kind::Checks, 1).is_ok(), "unlimited");
        assert!(
            limits.take("acme", Kind::Writes, 100).is_ok(),
            "writes are not limited here"
        );
    }
}
