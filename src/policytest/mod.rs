//! `portcullis test`: policy test suites, run offline.
//!
//! A suite is a `*.test.yaml` file holding a `PolicyTest` document: the
//! manifests it loads, a fixed clock, and cases (one check and the decision
//! it must get), tables (every subject × action × resource) and lookups
//! (the exact subjects of a reverse query). The engine is built in process
//! from the manifests, validated as the server validates writes, so no
//! server or store is involved. Coverage counts, for every role statement
//! and binding, the cases it applied in (from each check's explanation).
//!
//! - [`spec`]: the file format, parsed into cases.
//! - [`eval`]: building the engine, running cases, coverage.
//! - [`report`]: the text, JSON and JUnit reports.

pub mod eval;
pub mod report;
pub mod spec;

use std::path::PathBuf;

use serde::Serialize;

pub use eval::{CaseResult, Coverage};
pub use spec::SuiteError;

/// One file's results.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    pub name: String,
    pub results: Vec<CaseResult>,
}

/// Every file's results and the coverage they add up to.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: Vec<FileReport>,
    pub passed: usize,
    pub failed: usize,
    pub coverage: Coverage,
    pub coverage_percent: f64,
}

/// Loads every suite under `paths` (all of them first, so an invalid file
/// stops the run before anything is reported), then runs them.
pub fn run(paths: &[PathBuf]) -> Result<Report, SuiteError> {
    let files = spec::discover(paths)?;
    if files.is_empty() {
        return Err(SuiteError {
            file: paths.first().cloned().unwrap_or_default(),
            detail: "no *.test.yaml files found".into(),
        });
    }
    let mut suites = Vec::new();
    for f in &files {
        let suite = spec::load(f)?;
        let (engine, universe) = eval::build(&suite)?;
        suites.push((suite, engine, universe));
    }
    let mut coverage = Coverage::default();
    let mut out = Vec::new();
    for (suite, engine, universe) in &suites {
        coverage.add_universe(universe);
        let mut results = Vec::new();
        for c in &suite.cases {
            let r = eval::run_case(suite, engine, c)?;
            coverage.add_case(&r);
            results.push(r);
        }
        for l in &suite.lookups {
            results.push(eval::run_lookup(suite, engine, l)?);
        }
        out.push(FileReport {
            file: suite.file.clone(),
            name: suite.name.clone(),
            results,
        });
    }
    let passed = out.iter().flat_map(|f| &f.results).filter(|r| r.passed).count();
    let failed = out.iter().flat_map(|f| &f.results).filter(|r| !r.passed).count();
    Ok(Report {
        files: out,
        passed,
        failed,
        coverage_percent: coverage.percent(),
        coverage,
    })
}
