//! Tenant shards: which replicas serve which tenants, and routing a call
//! to them.
//!
//! An installation larger than one machine runs several shards on one
//! shared store. Each shard's replicas load and follow only their tenant
//! patterns; a call for any other tenant is refused with
//! FAILED_PRECONDITION, reason `WRONG_SHARD`. The shard map names every
//! shard's address and patterns, and is read by both sides: the servers
//! (`portcullis serve --shard-map FILE --shard NAME`) and the callers
//! ([`Router`]), so both agree where a tenant lives.
//!
//! ```yaml
//! shards:
//!   - name: big
//!     address: http://portcullis-big:50051
//!     tenants: ["acme/**", "globex"]
//!   - name: rest
//!     address: http://portcullis-rest:50051
//!     tenants: ["**"]
//! ```
//!
//! A pattern is a tenant id (that tenant only), a tenant id followed by
//! `/**` (that tenant and its whole subtree), or `**` (every tenant). A
//! tenant is routed to the first shard with a pattern that matches it, so
//! a catch-all shard goes last.

use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::{Client, Config, Error};

/// One tenant pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    Subtree(String),
    Exact(String),
}

/// The tenants a shard serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenants {
    patterns: Vec<Pattern>,
}

// The server's own rules live in its engine, which the client must not pull
// in; these two copies are held to them by
// `tests/shards.rs::the_client_reads_tenant_ids_as_the_server_does`.
fn within(tenant: &str, prefix: &str) -> bool {
    tenant == prefix
        || (tenant.len() > prefix.len() && tenant.starts_with(prefix) && tenant.as_bytes()[prefix.len()] == b'/')
}

/// A tenant id's shape, as the server checks it: 1 to 8 DNS labels joined
/// by `/`.
fn tenant_id_rule(s: &str) -> Result<(), String> {
    let labels: Vec<&str> = s.split('/').collect();
    if labels.len() > 8 {
        return Err("at most 8 levels".into());
    }
    for l in labels {
        let ok = !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if !ok {
            return Err(format!(
                "{l:?} is not a DNS label (lowercase letters, digits and '-', 1 to 63)"
            ));
        }
    }
    Ok(())
}

impl Tenants {
    /// Every tenant: a server that is not sharded.
    pub fn all() -> Tenants {
        Tenants {
            patterns: vec![Pattern::All],
        }
    }

    /// Comma-separated patterns: `acme/**,globex`.
    pub fn parse(s: &str) -> Result<Tenants, String> {
        Tenants::from_list(s.split(',').map(str::trim))
    }

    fn from_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Tenants, String> {
        let mut patterns = Vec::new();
        for (i, p) in items.into_iter().enumerate() {
            let pattern = if p == "**" {
                Pattern::All
            } else if let Some(t) = p.strip_suffix("/**") {
                tenant_id_rule(t).map_err(|e| format!("pattern {i} ({p:?}): {e}"))?;
                Pattern::Subtree(t.to_string())
            } else {
                tenant_id_rule(p).map_err(|e| format!("pattern {i} ({p:?}): {e}; write TENANT, TENANT/** or **"))?;
                Pattern::Exact(p.to_string())
            };
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            return Err("list at least one tenant pattern".into());
        }
        Ok(Tenants { patterns })
    }

    pub fn is_all(&self) -> bool {
        self.patterns.contains(&Pattern::All)
    }

    /// Whether calls for `tenant` belong here.
    pub fn serves(&self, tenant: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::All => true,
            Pattern::Subtree(t) => within(tenant, t),
            Pattern::Exact(t) => tenant == t,
        })
    }

    /// Whether `tenant` is a strict ancestor of a served tenant: its
    /// tenant-level objects (the tenant itself, its tenant-scoped roles,
    /// tenant-wide bindings and memberships) reach down into what is
    /// served, so a shard holds them too, but not its vaults.
    pub fn is_above(&self, tenant: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::All => false,
            Pattern::Subtree(t) | Pattern::Exact(t) => t != tenant && within(t, tenant),
        })
    }

    /// The patterns as written, for messages and GetServerInfo.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::All => "**".to_string(),
                Pattern::Subtree(t) => format!("{t}/**"),
                Pattern::Exact(t) => t.clone(),
            })
            .collect()
    }
}

impl std::fmt::Display for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.patterns().join(","))
    }
}

impl std::str::FromStr for Tenants {
    type Err = String;
    fn from_str(s: &str) -> Result<Tenants, String> {
        Tenants::parse(s)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    shards: Vec<ShardFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardFile {
    name: String,
    #[serde(default)]
    address: String,
    tenants: Vec<String>,
}

/// One shard of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    /// Where callers reach it (`http://host:port` or `https://…`).
    pub address: String,
    pub tenants: Tenants,
}

/// Every shard, in routing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub shards: Vec<Shard>,
}

impl ShardMap {
    /// Parses the YAML map; errors name the shard and the rule.
    pub fn parse(text: &str) -> Result<ShardMap, String> {
        let file: MapFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut shards: Vec<Shard> = Vec::new();
        for (i, s) in file.shards.into_iter().enumerate() {
            if s.name.is_empty() {
                return Err(format!("shards[{i}].name: must not be empty"));
            }
            if shards.iter().any(|o| o.name == s.name) {
                return Err(format!("shards[{i}].name: {:?} appears twice", s.name));
            }
            let tenants = Tenants::from_list(s.tenants.iter().map(String::as_str))
                .map_err(|e| format!("shards[{i}].tenants: {e}"))?;
            shards.push(Shard {
                name: s.name,
                address: s.address,
                tenants,
            });
        }
        if shards.is_empty() {
            return Err("shards: list at least one shard".into());
        }
        Ok(ShardMap { shards })
    }

    pub fn load(path: &std::path::Path) -> Result<ShardMap, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ShardMap::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn shard(&self, name: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.name == name)
    }

    /// The shard calls for `tenant` go to: the first that serves it.
    pub fn route(&self, tenant: &str) -> Option<&Shard> {
        self.shards.iter().find(|s| s.tenants.serves(tenant))
    }
}

/// Clients for every shard of a map, routing by tenant. The map can be
/// replaced while calls go on ([`Router::update`]): a tenant moved to
/// another shard is called there from then on, and connections to shards
/// whose address did not change are kept.
pub struct Router {
    base: Box<dyn Fn(&str) -> Config + Send + Sync>,
    current: RwLock<Arc<Routes>>,
}

struct Routes {
    map: ShardMap,
    clients: Vec<(String, Client)>,
}

impl Router {
    /// `config` makes the connection settings (key, TLS, timeouts) for a
    /// shard's address. Connections are made lazily, so a shard that is
    /// down fails only the calls routed to it.
    pub fn new(map: ShardMap, config: impl Fn(&str) -> Config + Send + Sync + 'static) -> Result<Router, Error> {
        let router = Router {
            base: Box::new(config),
            current: RwLock::new(Arc::new(Routes {
                map: ShardMap { shards: Vec::new() },
                clients: Vec::new(),
            })),
        };
        router.update(map)?;
        Ok(router)
    }

    /// Replaces the map, reusing the clients of unchanged addresses.
    pub fn update(&self, map: ShardMap) -> Result<(), Error> {
        let old = self.routes();
        let mut clients = Vec::new();
        for s in &map.shards {
            let client = match old.clients.iter().find(|(a, _)| *a == s.address) {
                Some((_, c)) => c.clone(),
                None => (self.base)(&s.address).connect_lazy()?,
            };
            clients.push((s.address.clone(), client));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Routes { map, clients });
        Ok(())
    }

    fn routes(&self) -> Arc<Routes> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The client for `tenant`'s shard, and the shard's name; an error when
    /// no shard serves it.
    pub fn for_tenant(&self, tenant: &str) -> Result<(String, Client), Error> {
        let r = self.routes();
        r.map
            .shards
            .iter()
            .zip(&r.clients)
            .find(|(s, _)| s.tenants.serves(tenant))
            .map(|(s, (_, c))| (s.name.clone(), c.clone()))
            .ok_or_else(|| Error::config(format!("no shard of the map serves tenant {tenant:?}")))
    }

    /// The map in force.
    pub fn map(&self) -> ShardMap {
        self.routes().map.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_tenants_and_their_subtrees() {
        let t = Tenants::parse("acme/**, globex").unwrap();
        assert!(t.serves("acme") && t.serves("acme/eng/web") && t.serves("globex"));
        assert!(!t.serves("acmeco") && !t.serves("globex/sales") && !t.serves("initech"));
        assert!(!t.is_above("acme") && !t.is_above("globex"));
        let deep = Tenants::parse("acme/eng/**").unwrap();
        assert!(deep.is_above("acme") && !deep.is_above("acme/eng") && !deep.is_above("acme/sales"));
        assert!(Tenants::all().serves("anything") && !Tenants::all().is_above("x"));
        assert_eq!(t.patterns(), ["acme/**", "globex"]);
        for bad in ["", "Acme", "acme/*", "acme//x", "-a"] {
            assert!(Tenants::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_map_routes_to_the_first_shard_serving_a_tenant() {
        let m = ShardMap::parse(
            "shards:\n  - {name: big, address: 'http://a:1', tenants: ['acme/**']}\n  - {name: rest, address: 'http://b:1', tenants: ['**']}\n",
        )
        .unwrap();
        assert_eq!(m.route("acme/eng").unwrap().name, "big");
        assert_eq!(m.route("globex").unwrap().name, "rest");
        let e = ShardMap::parse("shards:\n  - {name: a, tenants: ['Bad']}\n").unwrap_err();
        assert!(e.contains("shards[0].tenants: pattern 0"), "{e}");
        let e = ShardMap::parse("shards:\n  - {name: a, tenant: ['x']}\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
