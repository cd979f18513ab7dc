//! A deterministic, seeded generator of realistic organisations, for
//! benchmarks, load tests and property tests. The same seed and shape give
//! the same changes on every machine and version (it uses its own PRNG).
//!
//! Shape (org-10k): a root tenant with 10 sub-tenants, one vault in the
//! first sub-tenant, users each in 2 groups, one group in five nested in
//! another (with one deliberate membership cycle), 50 roles of 5 to 20
//! statements (exact and wildcard actions, one statement in ten a DENY, one
//! in twenty with a condition), and bindings of users (90%) and groups (10%)
//! scoped over a folder tree `document:f{0..2000}/...`. Half the roles are
//! tenant-scoped at the root, half belong to the vault.

use super::ids::*;
use super::model::*;

/// SplitMix64: tiny, fast, and fixed forever.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub users: usize,
    pub groups: usize,
    pub roles: usize,
    pub bindings: usize,
    pub folders: usize,
}

impl Shape {
    pub const ORG_10K: Shape = Shape {
        users: 10_000,
        groups: 500,
        roles: 50,
        bindings: 100_000,
        folders: 2_000,
    };
    /// org-1m keeps org-10k's proportions: ten times the users and groups.
    pub const ORG_1M: Shape = Shape {
        users: 100_000,
        groups: 5_000,
        roles: 50,
        bindings: 1_000_000,
        folders: 2_000,
    };

    pub fn scaled(users: usize, bindings: usize) -> Shape {
        Shape {
            users,
            groups: (users / 20).max(2),
            roles: 50,
            bindings,
            folders: 2_000,
        }
    }
}

pub const NAMESPACES: [&str; 5] = ["documents", "folders", "comments", "shares", "billing"];
pub const VERBS: [&str; 8] = [
    "read", "write", "delete", "list", "share", "comment", "approve", "export",
];

pub struct Dataset {
    pub tenant: TenantId,
    pub vault: VaultName,
    pub changes: Vec<Change>,
    pub shape: Shape,
    /// For each user, the folders of its own bindings (for realistic queries).
    user_folders: Vec<Vec<u32>>,
}

pub struct Query {
    pub subject: String,
    pub action: String,
    pub resource: String,
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).expect("valid generated tenant")
}

impl Dataset {
    pub fn generate(shape: Shape, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let mut changes = Vec::with_capacity(shape.bindings + shape.users * 2 + 100);
        let root = tid("org");
        changes.push(Change::PutTenant(Tenant {
            display_name: "Org".into(),
            ..Tenant::new(root.clone())
        }));
        for d in 0..10 {
            changes.push(Change::PutTenant(Tenant::new(tid(&format!("org/d{d}")))));
        }
        let tenant = tid("org/d0");
        let vault = VaultName::parse("docs").expect("valid");
        changes.push(Change::PutVault(Vault {
            tenant: tenant.clone(),
            name: vault.clone(),
            display_name: "Documents".into(),
            labels: Labels::new(),
        }));

        // Roles: half at the root tenant, half in the vault; a few inherit.
        let mut role_names: Vec<RoleName> = Vec::new();
        for r in 0..shape.roles {
            let name = RoleName::parse(&format!("role-{r}")).expect("valid");
            let n = 5 + rng.below(16) as usize;
            let mut statements = Vec::with_capacity(n);
            for i in 0..n {
                let ns = *rng.pick(&NAMESPACES);
                let action = match rng.below(10) {
                    0 => format!("{ns}:*"),
                    1 => format!("*:{}", rng.pick(&VERBS)),
                    _ => format!("{ns}:{}", rng.pick(&VERBS)),
                };
                let mut actions = vec![action];
                if rng.chance(3) {
                    actions.push(format!("{}:{}", rng.pick(&NAMESPACES), rng.pick(&VERBS)));
                }
                let resources = match rng.below(4) {
                    0 => vec![],
                    1 => vec!["document:*".to_string()],
                    2 => vec![format!("document:f{}*", rng.below(10))],
                    _ => vec!["document:*".to_string(), "folder:*".to_string()],
                };
                let effect = if i % 10 == 9 { Effect::Deny } else { Effect::Allow };
                let condition = (rng.chance(20)).then(|| match rng.below(3) {
                    0 => "context.mfa == true".to_string(),
                    1 => "context.level >= 2".to_string(),
                    _ => "resource.endsWith('.pdf')".to_string(),
                });
                statements.push(Statement {
                    sid: Some(format!("s{i}")),
                    effect,
                    actions,
                    resources,
                    condition,
                });
            }
            let inherits = if r >= 10 && rng.chance(5) {
                vec![role_names[rng.below(10) as usize % role_names.len()].clone()]
            } else {
                vec![]
            };
            let at_root = r % 2 == 0 || r < 10;
            changes.push(Change::PutRole(Role {
                tenant: if at_root { root.clone() } else { tenant.clone() },
                vault: if at_root { None } else { Some(vault.clone()) },
                name: name.clone(),
                description: String::new(),
                statements,
                inherits,
                labels: Labels::new(),
            }));
            role_names.push(name);
        }

        // Memberships: each user in 2 groups; one group in five nested.
        let group = |g: usize| Subject::parse(&format!("group:g{g}")).expect("valid");
        let user = |u: usize| Subject::parse(&format!("user:u{u}")).expect("valid");
        for u in 0..shape.users {
            let g1 = rng.below(shape.groups as u64) as usize;
            let mut g2 = rng.below(shape.groups as u64) as usize;
            if g2 == g1 {
                g2 = (g1 + 1) % shape.groups;
            }
            for g in [g1, g2] {
                changes.push(Change::PutMembership(Membership {
                    tenant: tenant.clone(),
                    vault: Some(vault.clone()),
                    group: group(g),
                    member: user(u),
                    source: Source::Api,
                }));
            }
        }
        for g in (0..shape.groups).step_by(5) {
            let parent = (g + 1 + rng.below(shape.groups as u64 - 1) as usize) % shape.groups;
            changes.push(Change::PutMembership(Membership {
                tenant: root.clone(),
                vault: None,
                group: group(parent),
                member: group(g),
                source: Source::Api,
            }));
        }
        // A deliberate cycle: g1 ⊂ g2 ⊂ g1.
        for (a, b) in [(1, 2), (2, 1)] {
            changes.push(Change::PutMembership(Membership {
                tenant: tenant.clone(),
                vault: Some(vault.clone()),
                group: group(a),
                member: group(b),
                source: Source::Api,
            }));
        }

        // Bindings over the folder tree.
        let mut user_folders = vec![Vec::new(); shape.users];
        for i in 0..shape.bindings {
            let folder = rng.below(shape.folders as u64) as u32;
            let subject = if rng.chance(10) {
                group(rng.below(shape.groups as u64) as usize)
            } else {
                let u = rng.below(shape.users as u64) as usize;
                user_folders[u].push(folder);
                user(u)
            };
            let scope = match rng.below(3) {
                0 => vec![format!("document:f{folder}/*")],
                1 => vec![format!("document:f{folder}/s{}/*", rng.below(5))],
                _ => vec![format!("document:f{folder}/*"), format!("folder:f{folder}")],
            };
            let expires_at = rng
                .chance(50)
                .then(|| Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").expect("valid"));
            changes.push(Change::PutBinding(Binding {
                id: format!("b{i}"),
                tenant: tenant.clone(),
                vault: Some(vault.clone()),
                subject,
                grant: Grant::Role(rng.pick(&role_names).clone()),
                scope,
                condition: None,
                not_before: None,
                expires_at,
                labels: Labels::new(),
                source: Source::Api,
            }));
        }
        Dataset {
            tenant,
            vault,
            changes,
            shape,
            user_folders,
        }
    }

    /// A realistic query: a random user, a random action, and (half the
    /// time) a resource in one of the user's own folders.
    pub fn query(&self, rng: &mut Rng) -> Query {
        let u = rng.below(self.shape.users as u64) as usize;
        let folder = match (&self.user_folders[u], rng.chance(2)) {
            (f, true) if !f.is_empty() => *rng.pick(f),
            _ => rng.below(self.shape.folders as u64) as u32,
        };
        let ext = if rng.chance(2) { "pdf" } else { "txt" };
        Query {
            subject: format!("user:u{u}"),
            action: format!("{}:{}", rng.pick(&NAMESPACES), rng.pick(&VERBS)),
            resource: format!("document:f{folder}/s{}/file{}.{ext}", rng.below(5), rng.below(100)),
        }
    }

    /// One more binding, as an incremental write would add it.
    pub fn extra_binding(&self, rng: &mut Rng, n: usize) -> Change {
        let u = rng.below(self.shape.users as u64);
        Change::PutBinding(Binding {
            id: format!("extra{n}"),
            tenant: self.tenant.clone(),
            vault: Some(self.vault.clone()),
            subject: Subject::parse(&format!("user:u{u}")).expect("valid"),
            grant: Grant::Role(
                RoleName::parse(&format!("role-{}", rng.below(self.shape.roles as u64))).expect("valid"),
            ),
            scope: vec![format!("document:f{}/*", rng.below(self.shape.folders as u64))],
            condition: None,
            not_before: None,
            expires_at: None,
            labels: Labels::new(),
            source: Source::Api,
        })
    }

    /// A subject reached by many bindings, for the reverse-lookup
    /// benchmarks: `group:hot` holds `bindings` bindings (the dataset's
    /// roles in turn, each limited to one sub-folder) and has `user:hot` and
    /// `members` others (`user:hot0`...) as members.
    pub fn hot_group(&self, bindings: usize, members: usize) -> Vec<Change> {
        let group = Subject::parse("group:hot").expect("valid");
        let folders = self.shape.folders;
        let mut out: Vec<Change> = (0..bindings)
            .map(|i| {
                Change::PutBinding(Binding {
                    id: format!("hot{i}"),
                    tenant: self.tenant.clone(),
                    vault: Some(self.vault.clone()),
                    subject: group.clone(),
                    grant: Grant::Role(RoleName::parse(&format!("role-{}", i % self.shape.roles)).expect("valid")),
                    scope: vec![format!("document:f{}/s{}/*", i % folders, (i / folders) % 5)],
                    condition: None,
                    not_before: None,
                    expires_at: None,
                    labels: Labels::new(),
                    source: Source::Api,
                })
            })
            .collect();
        out.extend(
            std::iter::once("user:hot".to_string())
                .chain((0..members).map(|i| format!("user:hot{i}")))
                .map(|m| {
                    Change::PutMembership(Membership {
                        tenant: self.tenant.clone(),
                        vault: Some(self.vault.clone()),
                        group: group.clone(),
                        member: Subject::parse(&m).expect("valid"),
                        source: Source::Api,
                    })
                }),
        );
        out
    }

    /// One more membership, as an incremental write would add it.
    pub fn extra_membership(&self, rng: &mut Rng) -> Change {
        Change::PutMembership(Membership {
            tenant: self.tenant.clone(),
            vault: Some(self.vault.clone()),
            group: Subject::parse(&format!("group:g{}", rng.below(self.shape.groups as u64))).expect("valid"),
            member: Subject::parse(&format!("user:u{}", rng.below(self.shape.users as u64))).expect("valid"),
            source: Source::Api,
        })
    }
}
