//! The command line against a real server: the README's flow (apply the
//! example, check), export and import, and health.

mod common;

use std::process::Command;

use common::*;
use portcullis::server::ServeOptions;

fn cli(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("PORTCULLIS_ENDPOINT", endpoint)
        .output()
        .expect("cli runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_check_export_import() {
    let srv = start(ServeOptions::for_tests()).await;
    let ep = format!("http://{}", srv.addr);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acme.yaml");
    let (ok, out) = cli(&ep, &["apply", "-f", example]);
    assert!(ok, "{out}");
    assert!(out.contains("tenant acme/eng/platform applied"), "{out}");
    assert!(out.contains("4 bindings in acme/eng/platform:docs"), "{out}");
    // Applying again changes nothing.
    let (ok, out) = cli(&ep, &["apply", "-f", example]);
    assert!(ok && out.contains("tenant acme unchanged"), "{out}");

    let check = |subject: &str, action: &str, resource: &str, extra: &[&str]| {
        let mut a = vec![
            "check",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
            "--subject",
            subject,
            "--action",
            action,
            "--resource",
            resource,
            "--explain",
        ];
        a.extend_from_slice(extra);
        cli(&ep, &a)
    };
    let (ok, out) = check("user:carol", "documents:read", "document:design.md", &[]);
    assert!(ok && out.starts_with("ALLOWED (REASON_ALLOWED)"), "{out}");
    assert!(
        out.contains("user:carol > group:platform-oncall > group:platform"),
        "{out}"
    );
    let (_, out) = check("user:bob", "documents:read", "document:security/keys", &[]);
    assert!(out.starts_with("DENIED (REASON_EXPLICIT_DENY)"), "{out}");
    let (_, out) = check("user:alice", "documents:delete", "document:x", &[]);
    assert!(out.starts_with("DENIED (REASON_EXPLICIT_DENY)"), "{out}");
    let (_, out) = check(
        "user:alice",
        "documents:delete",
        "document:x",
        &["--context", r#"{"mfa": true}"#],
    );
    assert!(out.starts_with("ALLOWED"), "{out}");
    let (ok, out) = check("alice", "documents:read", "document:x", &[]);
    assert!(
        !ok && out.contains("InvalidArgument") && out.contains("subject"),
        "{out}"
    );

    // Export, then import into a fresh vault: the same decisions there.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.yaml");
    let (ok, out) = cli(
        &ep,
        &[
            "export",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    // Not a terminal: progress as plain lines on stderr.
    assert!(
        out.lines().any(|l| l.starts_with("exporting ") && l.ends_with("/s)")),
        "{out}"
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    assert!(
        exported.contains("kind: Binding") && exported.contains("kind: Membership"),
        "{exported}"
    );
    let mut a = admin(srv.addr, None).await;
    a.apply_vault(portcullis_proto::v1::ApplyVaultRequest {
        vault: Some(vault("acme/eng/platform", "copy")),
        expected_revision: String::new(),
    })
    .await
    .unwrap();
    let (ok, out) = cli(
        &ep,
        &[
            "import",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "copy",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("4 bindings"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("importing ") && l.contains("/")),
        "{out}"
    );
    let (_, out) = cli(
        &ep,
        &[
            "check",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "copy",
            "--subject",
            "user:carol",
            "--action",
            "documents:read",
            "--resource",
            "document:a",
        ],
    );
    assert!(out.starts_with("ALLOWED"), "{out}");

    let (ok, out) = cli(&ep, &["health"]);
    assert!(ok && out.contains("SERVING"), "{out}");
    // A refusal prints its reason and each field violation on a line.
    let (ok, out) = cli(
        &ep,
        &[
            "check",
            "--tenant",
            "acme",
            "--vault",
            "docs",
            "--subject",
            "no colon",
            "--action",
            "documents:read",
            "--resource",
            "document:a",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("\n  reason: INVALID_ARGUMENT"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("  subject: ")), "{out}");
    let (ok, out) = cli(&ep, &["hash-key", "test"]);
    assert!(
        ok && out.trim() == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "{out}"
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_dry_run_show_the_plan_and_write_nothing() {
    let srv = start(ServeOptions::for_tests()).await;
    let ep = format!("http://{}", srv.addr);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acme.yaml");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("PORTCULLIS_ENDPOINT", &ep)
            .output()
            .expect("cli runs");
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Everything would be created.
    let (code, out) = run(&["diff", "-f", example]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("create tenant acme"), "{out}");
    assert!(out.contains("+ user:carol ALLOW documents:read, documents:list on document:* via binding platform-writers (role doc-writer) as user:carol > group:platform-oncall > group:platform"), "{out}");
    let (code, _) = run(&["apply", "-f", example]);
    assert_eq!(code, 0);
    let (code, out) = run(&["diff", "-f", example]);
    assert_eq!((code, out.trim()), (0, "no changes"));
    // Demote the platform writers: an update, and what each member loses.
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("acme.yaml");
    std::fs::write(
        &edited,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("      role: doc-writer", "      role: doc-reader"),
    )
    .unwrap();
    let edited = edited.to_str().unwrap();
    let (code, out) = run(&["apply", "--dry-run", "-f", edited]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("update binding acme/eng/platform:docs platform-writers"),
        "{out}"
    );
    assert!(
        out.contains("  - grant: !role doc-writer") && out.contains("  + grant: !role doc-reader"),
        "{out}"
    );
    assert!(
        out.contains("- user:bob ALLOW documents:write, documents:comment on document:* via binding platform-writers"),
        "{out}"
    );
    // The dry run wrote nothing: the diff still shows the change, in JSON too.
    let (code, out) = run(&["diff", "-f", edited, "--output", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changes"], true);
    assert!(
        v["access"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["subject"] == "user:bob")
    );
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_verify_and_export() {
    let srv = start(ServeOptions::for_tests()).await;
    let ep = format!("http://{}", srv.addr);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acme.yaml");
    let (ok, out) = cli(&ep, &["apply", "-f", example]);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &ep,
        &["audit", "list", "--tenant", "acme", "--descendants", "--kind", "role"],
    );
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("CREATE role doc-reader") && l.contains("by anonymous (ApplyRole)")),
        "{out}"
    );
    let (ok, out) = cli(&ep, &["audit", "verify", "--tenant", "acme/eng/platform"]);
    assert!(ok && out.contains("chain intact"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let (ok, out) = cli(
        &ep,
        &[
            "audit",
            "export",
            "--tenant",
            "acme",
            "--descendants",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty());
    assert!(out.contains(&format!("{} events written", lines.len())), "{out}");
    assert!(
        lines
            .iter()
            .all(|e| e["actor"] == "anonymous" && e["prev_hash"].as_str().unwrap().len() == 64)
    );
    assert!(
        lines
            .iter()
            .any(|e| e["kind"] == "binding" && e["after"]["subject"].is_string())
    );
    let (ok, out) = cli(&ep, &["audit", "list", "--tenant", "acme", "--since", "yesterday"]);
    assert!(!ok && out.contains("--since"), "{out}");
    srv.shutdown().await;
}

/// Completions and the man page come from the clap definitions, so every
/// command and flag is in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_describe_and_json_outputs() {
    let srv = start(ServeOptions::for_tests()).await;
    let ep = format!("http://{}", srv.addr);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acme.yaml");
    assert!(cli(&ep, &["apply", "-f", example]).0);

    let (ok, out) = cli(&ep, &["get", "tenants"]);
    assert!(ok, "{out}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "REVISION"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("acme/eng/platform ") && l.contains("ACTIVE")),
        "{out}"
    );
    let (_, wide) = cli(&ep, &["get", "tenants", "acme", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("DISPLAY NAME"), "{wide}");
    assert_eq!(wide.lines().count(), 2, "one tenant: {wide}");

    let (_, out) = cli(&ep, &["get", "roles", "--tenant", "acme", "-o", "wide"]);
    assert!(
        out.contains("INHERITS") && out.contains("doc-writer") && out.contains("doc-reader"),
        "{out}"
    );
    let (ok, out) = cli(&ep, &["get", "roles"]);
    assert!(!ok && out.contains("--tenant"), "{out}");

    // YAML and JSON are manifests: applying them back changes nothing.
    let dir = tempfile::tempdir().unwrap();
    for (format, args) in [
        ("yaml", vec!["get", "roles", "--tenant", "acme", "-o", "yaml"]),
        (
            "json",
            vec![
                "get",
                "bindings",
                "--tenant",
                "acme/eng/platform",
                "--vault",
                "docs",
                "-o",
                "json",
            ],
        ),
        (
            "json",
            vec![
                "get",
                "memberships",
                "--tenant",
                "acme/eng/platform",
                "--vault",
                "docs",
                "-o",
                "json",
            ],
        ),
        (
            "yaml",
            vec!["get", "vaults", "docs", "--tenant", "acme/eng/platform", "-o", "yaml"],
        ),
    ] {
        let (ok, out) = cli(&ep, &args);
        assert!(ok, "{out}");
        let docs = portcullis::manifest::parse_documents(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
        assert!(!docs.is_empty(), "{out}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["kind"], "List", "{out}");
        }
        let file = dir.path().join(format!("out.{format}"));
        std::fs::write(&file, &out).unwrap();
        let (ok, applied) = cli(&ep, &["apply", "-f", file.to_str().unwrap()]);
        assert!(ok, "{applied}");
        let changed = applied
            .lines()
            .any(|l| l.contains(" applied") || (l.contains(" written at ") && !l.starts_with("0 ")));
        assert!(!changed, "{args:?} changed something:\n{applied}");
    }
    let (_, out) = cli(
        &ep,
        &[
            "get",
            "bindings",
            "platform-writers",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out) = cli(
        &ep,
        &[
            "get",
            "bindings",
            "nope",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
        ],
    );
    assert!(!ok && out.contains("no binding \"nope\""), "{out}");

    let (ok, out) = cli(&ep, &["describe", "role", "doc-writer", "--tenant", "acme"]);
    assert!(ok && out.starts_with("Role:") && out.contains("Statements:"), "{out}");
    let (_, out) = cli(&ep, &["describe", "tenants", "acme"]);
    assert!(out.contains("Limits:") && out.contains("Usage:"), "{out}");
    let (_, out) = cli(
        &ep,
        &[
            "describe",
            "memberships",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
        ],
    );
    assert!(out.contains("Members ("), "{out}");

    let ask = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd, "--tenant", "acme/eng/platform", "--vault", "docs", "-o", "json"];
        a.extend_from_slice(extra);
        let (ok, out) = cli(&ep, &a);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let v = ask(
        "check",
        &[
            "--subject",
            "user:carol",
            "--action",
            "documents:read",
            "--resource",
            "document:design.md",
            "--explain",
        ],
    );
    assert_eq!(v["decision"], "ALLOWED");
    assert_eq!(v["reason"], "ALLOWED");
    assert!(v["checkedAt"].as_str().unwrap().starts_with("v1."));
    assert_eq!(v["explanation"]["entries"][0]["bindingId"], "platform-writers");
    let v = ask(
        "lookup-resources",
        &["--subject", "user:carol", "--action", "documents:read"],
    );
    assert_eq!(v["grants"][0]["bindingId"], "platform-writers");
    assert_eq!(v["suspended"], false);
    let v = ask(
        "lookup-subjects",
        &["--action", "documents:read", "--resource", "document:design.md"],
    );
    let subjects: Vec<&str> = v["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    assert!(subjects.contains(&"user:carol"), "{v}");
    let v = ask("effective", &["--subject", "user:carol"]);
    assert!(
        v["statements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["bindingId"] == "platform-writers"),
        "{v}"
    );
    // And as text.
    let (ok, out) = cli(
        &ep,
        &[
            "lookup-subjects",
            "--tenant",
            "acme/eng/platform",
            "--vault",
            "docs",
            "--action",
            "documents:read",
            "--resource",
            "document:design.md",
        ],
    );
    assert!(ok && out.lines().any(|l| l == "user:carol"), "{out}");
    srv.shutdown().await;
}

#[test]
fn completions_and_the_man_page_are_generated() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completion", "bash"]);
    assert!(
        bash.contains("_portcullis()") && bash.contains("--shard-map") && bash.contains("audit"),
        "bash"
    );
    let fish = run(&["completion", "fish"]);
    assert!(
        fish.contains("complete -c portcullis") && fish.contains("decision-log"),
        "fish"
    );
    let zsh = run(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef portcullis"), "zsh");
    let man = run(&["man"]);
    assert!(
        man.contains(".TH portcullis") && man.contains("serve"),
        "{}",
        &man[..man.len().min(300)]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}
