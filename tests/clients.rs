//! The generated Python (grpcio) and TypeScript (Connect) clients call a
//! running server: `clients/generate.sh` generates them from proto/, and
//! each language's example checks, looks up and reads a refusal's reason.
//!
//! Needs a Python with `clients/python/requirements.txt`
//! (`PORTCULLIS_TEST_PYTHON`, default `python3`) and `npm ci` in
//! `clients/typescript`; `.ci/run` provides both. Without them the test
//! prints SKIPPED and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use portcullis::server::ServeOptions;
use portcullis_client::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> Option<PathBuf> {
    let py = std::env::var_os("PORTCULLIS_TEST_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both examples print for `examples/acme.yaml` (the TypeScript enum
/// names drop the `DECISION_`/`REASON_` prefixes).
fn assert_answers(out: &str, allowed: &str, denied: &str, explicit_deny: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&format!("check user:carol documents:read document:design.md {allowed}").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(
            &format!("check user:bob documents:read document:security/keys {denied} {explicit_deny}").as_str()
        ),
        "{out}"
    );
    // The MFA condition read the request context.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("check user:alice documents:delete document:x") && l.contains(allowed)),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.starts_with("grant ")), "{out}");
}

// Multi-threaded: the examples run as blocking child processes while the
// server answers them from the runtime's other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_call_a_running_server() {
    let (Some(py), true) = (
        python(),
        root().join("clients/typescript/node_modules/.bin/buf").exists(),
    ) else {
        println!(
            "SKIPPED: the generated clients need PORTCULLIS_TEST_PYTHON (with clients/python/requirements.txt) and `npm ci` in clients/typescript"
        );
        return;
    };
    let srv = start(ServeOptions::for_tests()).await;
    let c = Config::new(format!("http://{}", srv.addr)).connect().await.unwrap();
    seed_acme(&c).await;
    let target = srv.addr.to_string();

    run(Command::new(root().join("clients/generate.sh")).env("PYTHON", &py));

    let out = run(Command::new(&py)
        .arg(root().join("clients/python/example.py"))
        .args(["--target", &target])
        .env("PYTHONPATH", root().join("clients/python/gen")));
    println!("python:\n{out}");
    assert_answers(
        &out,
        "DECISION_ALLOWED REASON_ALLOWED",
        "DECISION_DENIED",
        "REASON_EXPLICIT_DENY",
    );
    // The machine-readable reason, from the status details.
    assert!(out.lines().any(|l| l == "refused NOT_FOUND VAULT_NOT_FOUND"), "{out}");

    let ts = root().join("clients/typescript");
    run(Command::new(Path::new(&ts).join("node_modules/.bin/tsc"))
        .args(["-p"])
        .arg(&ts));
    let out = run(Command::new("node")
        .arg(ts.join("dist/example.js"))
        .args(["--target", &target]));
    println!("typescript:\n{out}");
    assert_answers(&out, "ALLOWED ALLOWED", "DENIED", "EXPLICIT_DENY");
    assert!(out.lines().any(|l| l == "refused NotFound"), "{out}");
    srv.shutdown().await;
}
