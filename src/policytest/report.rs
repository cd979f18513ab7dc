//! The reports: text for people (one line per case, why a failure failed,
//! coverage, and `N passed, M failed` alone on the last line), JSON for
//! programs and JUnit XML for CI systems.

use std::fmt::Write as _;

use super::Report;

/// The text report. `coverage` adds the coverage section before the
/// summary line.
pub fn text(r: &Report, coverage: bool) -> String {
    let mut s = String::new();
    for f in &r.files {
        for c in &f.results {
            let _ = writeln!(
                s,
                "{} {}: {}",
                if c.passed { "ok  " } else { "FAIL" },
                f.file.display(),
                c.name
            );
            if let Some(why) = &c.failure {
                let _ = writeln!(s, "       {} ({}): {why}", c.at, f.name);
                for line in &c.explanation {
                    let _ = writeln!(s, "         {line}");
                }
                if c.explanation.is_empty() && !c.at.contains("lookups") {
                    let _ = writeln!(s, "         no statement applied");
                }
            }
        }
    }
    if coverage {
        let cov = &r.coverage;
        let _ = writeln!(
            s,
            "coverage: {:.1}% of role statements and bindings",
            r.coverage_percent
        );
        for (item, n) in cov.statements.iter().chain(cov.bindings.iter()) {
            let _ = writeln!(s, "  {n:>5}  {item}");
        }
        let missed = cov.uncovered();
        if !missed.is_empty() {
            let _ = writeln!(s, "not exercised by any case:");
            for item in missed {
                let _ = writeln!(s, "  {item}");
            }
        }
    }
    let _ = writeln!(s, "{} passed, {} failed", r.passed, r.failed);
    s
}

/// The JSON report.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

/// XML text escaping. Written here because five replacements do not
/// warrant an XML crate.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// JUnit XML: one test suite per file, one test case per case or lookup.
pub fn junit(r: &Report) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"portcullis\" tests=\"{}\" failures=\"{}\">",
        r.passed + r.failed,
        r.failed
    );
    for f in &r.files {
        let failures = f.results.iter().filter(|c| !c.passed).count();
        let file = f.file.display().to_string();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" file=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            esc(&f.name),
            esc(&file),
            f.results.len()
        );
        for c in &f.results {
            let _ = write!(
                s,
                "    <testcase name=\"{}\" classname=\"{}\"",
                esc(&c.name),
                esc(&f.name)
            );
            match &c.failure {
                None => s.push_str("/>\n"),
                Some(why) => {
                    let _ = writeln!(
                        s,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        esc(why),
                        esc(&c.explanation.join("\n"))
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}
