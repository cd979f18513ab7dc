//! The test file format: a `PolicyTest` document (the same YAML tooling as
//! manifests applies), its cases, tables and lookups, parsed and checked
//! into [`Case`]s and [`Lookup`]s. Every error names the file, the document,
//! the case and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::Timestamp;
use crate::manifest::{self, Document};

/// A test file that cannot be run.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", file.display())]
pub struct SuiteError {
    pub file: PathBuf,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyTestDoc {
    #[serde(default)]
    #[allow(dead_code)] // read for the same shape as manifests
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: manifest::Metadata,
    spec: PolicyTestSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyTestSpec {
    #[serde(default)]
    manifests: Vec<String>,
    now: Option<String>,
    #[serde(default)]
    cases: Vec<CaseSpec>,
    #[serde(default)]
    tables: Vec<TableSpec>,
    #[serde(default)]
    lookups: Vec<LookupSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseSpec {
    name: String,
    tenant: String,
    vault: String,
    subject: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
    expect: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TableSpec {
    #[serde(default)]
    name: Option<String>,
    tenant: String,
    vault: String,
    resources: Vec<String>,
    actions: Vec<String>,
    #[serde(default)]
    context: Option<serde_json::Map<String, serde_json::Value>>,
    /// Subject to expected decision.
    expect: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LookupSpec {
    #[serde(default)]
    name: Option<String>,
    tenant: String,
    vault: String,
    action: String,
    resource: String,
    subjects: Vec<String>,
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Expect {
    Allowed,
    Denied,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Allowed => "ALLOWED",
            Expect::Denied => "DENIED",
        }
    }
}

/// One check to run and what it must answer.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// Where it is declared, for messages: `cases[3]`, `tables[0]`.
    pub at: String,
    pub tenant: String,
    pub vault: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub context: serde_json::Map<String, serde_json::Value>,
    pub expect: Expect,
    /// The engine's reason (`ALLOWED`, `NO_MATCH`, ...), when the case names one.
    pub reason: Option<crate::engine::Reason>,
}

/// One reverse lookup and its exact answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub name: String,
    pub at: String,
    pub tenant: String,
    pub vault: String,
    pub action: String,
    pub resource: String,
    pub subjects: Vec<String>,
}

/// A parsed test file: what it loads and what it checks.
#[derive(Debug, Clone)]
pub struct Suite {
    pub file: PathBuf,
    pub name: String,
    pub documents: Vec<Document>,
    pub now: Timestamp,
    pub cases: Vec<Case>,
    pub lookups: Vec<Lookup>,
}

fn expect_of(s: &str) -> Result<Expect, String> {
    match s {
        "ALLOWED" => Ok(Expect::Allowed),
        "DENIED" => Ok(Expect::Denied),
        _ => Err(format!("must be ALLOWED or DENIED, not {s:?}")),
    }
}

fn reason_of(s: &str) -> Result<crate::engine::Reason, String> {
    use crate::engine::Reason as R;
    let bare = s.strip_prefix("REASON_").unwrap_or(s);
    [R::Allowed, R::ExplicitDeny, R::NoMatch, R::TenantSuspended]
        .into_iter()
        .find(|r| r.as_str() == bare)
        .ok_or_else(|| {
            format!(
                "must be one of REASON_ALLOWED, REASON_EXPLICIT_DENY, REASON_NO_MATCH, REASON_TENANT_SUSPENDED, not {s:?}"
            )
        })
}

/// Reads a test file: its PolicyTest document, the manifests it names
/// (relative to it) and the other documents in it.
pub fn load(file: &Path) -> Result<Suite, SuiteError> {
    let err = |detail: String| SuiteError {
        file: file.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut test: Option<PolicyTestDoc> = None;
    let mut documents = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(de).map_err(|e| err(format!("document {n}: {e}")))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("PolicyTest") {
            if test.is_some() {
                return Err(err(format!("document {n}: one PolicyTest per file")));
            }
            let doc: PolicyTestDoc =
                serde_yaml::from_value(value).map_err(|e| err(format!("document {n} (PolicyTest): {e}")))?;
            debug_assert_eq!(doc.kind, "PolicyTest");
            test = Some(doc);
        } else {
            documents.push(serde_yaml::from_value(value).map_err(|e| err(format!("document {n}: {e}")))?);
        }
    }
    let test = test.ok_or_else(|| err("no PolicyTest document".into()))?;
    let name = if test.metadata.name.is_empty() {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        test.metadata.name.clone()
    };
    let doc = test.metadata.name.clone();
    let at = |field: String| {
        let doc = &doc;
        move |e: String| SuiteError {
            file: file.to_path_buf(),
            detail: format!("PolicyTest {doc}: {field}: {e}"),
        }
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut loaded = Vec::new();
    for (i, m) in test.spec.manifests.iter().enumerate() {
        let path = dir.join(m);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| at(format!("spec.manifests[{i}]"))(format!("cannot read {}: {e}", path.display())))?;
        let docs = manifest::parse_documents(&text)
            .map_err(|e| at(format!("spec.manifests[{i}]"))(format!("{}: {e}", path.display())))?;
        loaded.extend(docs);
    }
    loaded.extend(documents);
    let now = match &test.spec.now {
        Some(s) => Timestamp::parse_rfc3339(s).map_err(at("spec.now".into()))?,
        None => Timestamp::now(),
    };
    let mut cases = Vec::new();
    for (i, c) in test.spec.cases.iter().enumerate() {
        let f = format!("spec.cases[{i}]");
        cases.push(Case {
            name: c.name.clone(),
            at: f.clone(),
            tenant: c.tenant.clone(),
            vault: c.vault.clone(),
            subject: c.subject.clone(),
            action: c.action.clone(),
            resource: c.resource.clone(),
            context: c.context.clone().unwrap_or_default(),
            expect: expect_of(&c.expect).map_err(at(format!("{f}.expect")))?,
            reason: c
                .reason
                .as_deref()
                .map(reason_of)
                .transpose()
                .map_err(at(format!("{f}.reason")))?,
        });
    }
    for (i, t) in test.spec.tables.iter().enumerate() {
        let f = format!("spec.tables[{i}]");
        if t.expect.is_empty() || t.actions.is_empty() || t.resources.is_empty() {
            return Err(at(f)(
                "a table needs at least one subject in expect, one action and one resource".into(),
            ));
        }
        for (subject, e) in &t.expect {
            let expect = expect_of(e).map_err(at(format!("{f}.expect[{subject:?}]")))?;
            for action in &t.actions {
                for resource in &t.resources {
                    let label = t.name.as_deref().unwrap_or("table");
                    cases.push(Case {
                        name: format!("{label}: {subject} {action} {resource}"),
                        at: f.clone(),
                        tenant: t.tenant.clone(),
                        vault: t.vault.clone(),
                        subject: subject.clone(),
                        action: action.clone(),
                        resource: resource.clone(),
                        context: t.context.clone().unwrap_or_default(),
                        expect,
                        reason: None,
                    });
                }
            }
        }
    }
    let lookups = test
        .spec
        .lookups
        .iter()
        .enumerate()
        .map(|(i, l)| Lookup {
            name: l
                .name
                .clone()
                .unwrap_or_else(|| format!("who may {} {}", l.action, l.resource)),
            at: format!("spec.lookups[{i}]"),
            tenant: l.tenant.clone(),
            vault: l.vault.clone(),
            action: l.action.clone(),
            resource: l.resource.clone(),
            subjects: l.subjects.clone(),
        })
        .collect();
    Ok(Suite {
        file: file.to_path_buf(),
        name,
        documents: loaded,
        now,
        cases,
        lookups,
    })
}

/// The test files under `paths`: files as given, directories searched
/// recursively for `*.test.yaml`, sorted.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SuiteError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SuiteError> {
        let entries = std::fs::read_dir(dir).map_err(|e| SuiteError {
            file: dir.to_path_buf(),
            detail: format!("cannot read the directory: {e}"),
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.to_string_lossy().ends_with(".test.yaml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(SuiteError {
                file: p.clone(),
                detail: "no such file or directory".into(),
            });
        }
    }
    Ok(out)
}
