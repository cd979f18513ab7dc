//! `portcullis test` as a user runs it: passing, failing and invalid files,
//! exit codes, the summary line, coverage, JUnit and JSON.

use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("test")
        .args(args)
        .output()
        .expect("portcullis runs");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap_or("")
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// A suite over the example manifests, with `cases` as its cases.
fn suite(dir: &Path, name: &str, cases: &str) -> String {
    let manifests = Path::new(EXAMPLES).join("acme.yaml");
    let text = format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: PolicyTest\nmetadata: {{ name: {name} }}\nspec:\n  manifests: [{}]\n  now: \"2030-06-01T10:00:00Z\"\n  cases:\n{cases}",
        manifests.display()
    );
    let path = dir.join(format!("{name}.test.yaml"));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const BOB_WRITES: &str = "    - name: bob writes\n      tenant: acme/eng/platform\n      vault: docs\n      subject: user:bob\n      action: documents:write\n      resource: document:design.md\n      expect: ALLOWED\n";

#[test]
fn the_example_suite_passes_with_full_coverage() {
    let r = run(&[EXAMPLES, "--coverage", "--min-coverage", "100"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(last_line(&r.stdout), "15 passed, 0 failed", "{}", r.stdout);
    assert!(r.stdout.contains("coverage: 100.0%"), "{}", r.stdout);
    assert!(!r.stdout.contains("not exercised"), "{}", r.stdout);
    // Each statement and binding is listed with the cases it applied in.
    for item in [
        "role acme/doc-reader statement read",
        "role acme/doc-admin statement delete-needs-mfa",
        "role acme/finance/billing-viewer statement office-hours",
        "binding acme/eng/platform:docs/contractors-no-security",
        "binding acme/finance:billing/finance-bot",
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.ends_with(item))
            .unwrap_or_else(|| panic!("{item}: {}", r.stdout));
        let n: usize = line.split_whitespace().next().unwrap().parse().unwrap();
        assert!(n > 0, "{line}");
    }
}

#[test]
fn a_failing_case_shows_what_it_got_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = "    - name: bob reads the security folder\n      tenant: acme/eng/platform\n      vault: docs\n      subject: user:bob\n      action: documents:read\n      resource: document:security/keys\n      expect: ALLOWED\n";
    let file = suite(dir.path(), "wrong", &format!("{BOB_WRITES}{wrong}"));
    let junit = dir.path().join("report.xml");
    let r = run(&[&file, "--junit", junit.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(last_line(&r.stdout), "1 passed, 1 failed", "{}", r.stdout);
    assert!(r.stdout.contains("FAIL "), "{}", r.stdout);
    assert!(
        r.stdout.contains("expected ALLOWED, got DENIED (EXPLICIT_DENY)"),
        "{}",
        r.stdout
    );
    // The explanation names the binding and statement that decided.
    assert!(
        r.stdout
            .contains("DENY binding acme/eng/platform:docs/contractors-no-security as user:bob > group:contractors"),
        "{}",
        r.stdout
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"expected ALLOWED, got DENIED (EXPLICIT_DENY)\">"),
        "{xml}"
    );
}

#[test]
fn json_output_and_coverage_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let file = suite(dir.path(), "partial", BOB_WRITES);
    let r = run(&[&file, "--output", "json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some(1), Some(0)));
    let pct = v["coverage_percent"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 50.0, "{pct}");
    assert_eq!(v["coverage"]["statements"]["role acme/doc-writer statement write"], 1);
    assert_eq!(
        v["coverage"]["bindings"]["binding acme/eng/platform:docs/alice-admin"],
        0
    );
    // Below the threshold: exit 1, and the message says by how much.
    let r = run(&[&file, "--min-coverage", "90"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("below --min-coverage 90%"), "{}", r.stderr);
    assert!(r.stdout.contains("not exercised by any case"), "{}", r.stdout);
}

#[test]
fn invalid_files_name_the_file_document_case_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad_expect = BOB_WRITES.replace("expect: ALLOWED", "expect: MAYBE");
    let file = suite(dir.path(), "bad-expect", &bad_expect);
    let r = run(&[&file]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("bad-expect.test.yaml: PolicyTest bad-expect: spec.cases[0].expect: must be ALLOWED or DENIED"),
        "{}",
        r.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let bad_vault = BOB_WRITES.replace("vault: docs", "vault: nope");
    let r = run(&[&suite(dir.path(), "bad-vault", &bad_vault)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("spec.cases[0].vault: vault nope of tenant acme/eng/platform is not declared"),
        "{}",
        r.stderr
    );

    let dir = tempfile::tempdir().unwrap();
    let bad_subject = BOB_WRITES.replace("user:bob", "bob");
    let r = run(&[&suite(dir.path(), "bad-subject", &bad_subject)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("spec.cases[0].subject:"), "{}", r.stderr);

    // A role the server would refuse makes the file invalid, named by document and field.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("role.test.yaml");
    std::fs::write(
        &path,
        "apiVersion: portcullis.dev/v1alpha1\nkind: Tenant\nmetadata: { name: t }\nspec: {}\n---\napiVersion: portcullis.dev/v1alpha1\nkind: Role\nmetadata: { name: broken }\nspec:\n  tenant: t\n  statements:\n    - { effect: Allow, actions: [\"a:b\"], resources: [\"*\"], condition: \"contxt.x\" }\n---\napiVersion: portcullis.dev/v1alpha1\nkind: PolicyTest\nmetadata: { name: role }\nspec: { cases: [] }\n",
    )
    .unwrap();
    let r = run(&[path.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("Role broken: ") && r.stderr.contains("statements[0].condition"),
        "{}",
        r.stderr
    );

    // An unknown field is refused with its path.
    let dir = tempfile::tempdir().unwrap();
    let typo = BOB_WRITES.replace("expect: ALLOWED", "expect: ALLOWED\n      expct: DENIED");
    let r = run(&[&suite(dir.path(), "typo", &typo)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown field `expct`"), "{}", r.stderr);

    // No test files at all.
    let empty = tempfile::tempdir().unwrap();
    let r = run(&[empty.path().to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no *.test.yaml files found"), "{}", r.stderr);
}

#[test]
fn a_lookup_must_match_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lookup.test.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: PolicyTest\nmetadata: {{ name: lookup }}\nspec:\n  manifests: [{}]\n  now: \"2030-06-01T10:00:00Z\"\n  lookups:\n    - {{ tenant: acme/eng/platform, vault: docs, action: documents:read, resource: document:a, subjects: [user:alice, user:zed] }}\n",
            Path::new(EXAMPLES).join("acme.yaml").display()
        ),
    )
    .unwrap();
    let r = run(&[path.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("missing user:zed"), "{}", r.stdout);
    assert!(r.stdout.contains("unexpected group:platform"), "{}", r.stdout);
    assert_eq!(last_line(&r.stdout), "0 passed, 1 failed");
}
