//! Helpers for the end-to-end tests: finding kubectl, helm, the API server
//! and the repository, and running them.
//!
//! The suite runs against whatever `PORTCULLIS_TEST_KUBECONFIG` points at:
//! `.ci/run` starts a local kube-apiserver (../shared/tools/k8s); a user can
//! point it at kind or a real cluster. `kubectl` and `helm` come from
//! `PORTCULLIS_TEST_KUBECTL` / `PORTCULLIS_TEST_HELM`, else from `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart() -> PathBuf {
    repo().join("charts/portcullis")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn tool(var: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| on_path(name))
}

pub fn helm() -> Option<PathBuf> {
    let h = tool("PORTCULLIS_TEST_HELM", "helm");
    if h.is_none() {
        println!(
            "SKIPPED: no helm (set PORTCULLIS_TEST_HELM or put helm on PATH; .ci/run installs one with ../shared/tools/k8s/helm.sh)"
        );
    }
    h
}

pub fn kubectl() -> Option<PathBuf> {
    let k = tool("PORTCULLIS_TEST_KUBECTL", "kubectl");
    if k.is_none() {
        println!("SKIPPED: no kubectl (set PORTCULLIS_TEST_KUBECTL or put kubectl on PATH)");
    }
    k
}

pub fn kubeconfig() -> Option<PathBuf> {
    let k = std::env::var_os("PORTCULLIS_TEST_KUBECONFIG").map(PathBuf::from);
    if k.is_none() {
        println!("SKIPPED: no Kubernetes API server (set PORTCULLIS_TEST_KUBECONFIG; .ci/run starts one)");
    }
    k
}

/// Runs a command, returning its output; panics with stderr when it fails
/// and `must` is set.
pub fn run(cmd: &Path, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>, must: bool) -> Output {
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cmd.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    if must && !out.status.success() {
        panic!(
            "{} {} failed:\n{}\n{}",
            cmd.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The documents of a multi-document YAML stream.
pub fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind_of(v: &serde_yaml::Value) -> &str {
    v.get("kind").and_then(|k| k.as_str()).unwrap_or("")
}

pub fn name_of(v: &serde_yaml::Value) -> &str {
    v.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The directory holding the workspace's built binaries (next to this test's).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/debug/deps/<test> -> target/debug
    exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
}

/// `base` with a `--set` per value.
pub fn args<'a>(base: &[&'a str], set: &'a [&'a str]) -> Vec<&'a str> {
    let mut a = base.to_vec();
    for s in set {
        a.push("--set");
        a.push(s);
    }
    a
}

/// `helm template rel <chart> --namespace portcullis` with these values, as documents.
pub fn render(helm: &Path, set: &[&str], extra: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let mut a = args(&["template", "rel", chart, "--namespace", "portcullis"], set);
    a.extend_from_slice(extra);
    let out = run(helm, &a, &[], None, true);
    docs(&String::from_utf8_lossy(&out.stdout))
}

pub fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> Option<&'a serde_yaml::Value> {
    docs.iter().find(|d| kind_of(d) == kind && name_of(d) == name)
}
