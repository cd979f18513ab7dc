//! The admission webhook on a real API server: the operator serves it on
//! loopback (a `url:` webhook, as the API server here runs no Pods), scoped
//! by an object selector to this test's objects so no other test meets it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use portcullis::transport::TlsFiles;
use portcullis_operator::admission::FailurePolicy;
use portcullis_operator::webhook::WebhookOptions;

fn kubectl() -> Option<(PathBuf, PathBuf)> {
    let kubectl = std::env::var_os("PORTCULLIS_TEST_KUBECTL")?;
    let kubeconfig = std::env::var_os("PORTCULLIS_TEST_KUBECONFIG")?;
    Some((kubectl.into(), kubeconfig.into()))
}

/// `kubectl` with `input` on stdin: (success, stdout, stderr).
fn kubectl_run(k: &(PathBuf, PathBuf), args: &[&str], manifest: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(&k.0)
        .args(args)
        .env("KUBECONFIG", &k.1)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("manifest written");
    let out = child.wait_with_output().expect("kubectl ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A self-signed certificate for 127.0.0.1, its PEM files and the PEM.
fn certificate(dir: &std::path::Path) -> (TlsFiles, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("certificate");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, c.cert.pem()).expect("cert written");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("key written");
    (
        TlsFiles {
            cert,
            key,
            client_ca: None,
        },
        c.cert.pem(),
    )
}

fn configuration(env: &Env, port: u16, ca_pem: &str) -> ValidatingWebhookConfiguration {
    use base64::Engine as _;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": format!("portcullis-test-{}", env.id)},
        "webhooks": [{
            "name": format!("t{}.validate.portcullis.dev", env.id),
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/validate"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{
                "apiGroups": ["portcullis.dev"],
                "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["tenants", "vaults", "roles"],
                "scope": "*",
            }],
            "objectSelector": {"matchLabels": {TEST_LABEL: env.id}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }],
    }))
    .expect("a valid configuration")
}

fn role_yaml(env: &Env, name: &str, condition: &str) -> String {
    format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: Role
metadata:
  name: {name}
  namespace: {ns}
  labels: {{ "{TEST_LABEL}": "{id}" }}
spec:
  tenant: {tenant}
  statements:
    - effect: Allow
      actions: ["documents:read"]
      resources: ["document:*"]
    - effect: Allow
      actions: ["documents:write"]
      resources: ["document:*"]
      condition: "{condition}"
"#,
        ns = env.ns,
        id = env.id,
        tenant = env.tenant_name(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_invalid_resources_at_kubectl_apply() {
    let Some(client) = client().await else { return };
    let Some(k) = kubectl() else {
        println!("SKIPPED: no kubectl (set PORTCULLIS_TEST_KUBECTL)");
        return;
    };
    let mut env = Env::new(client.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls, ca_pem) = certificate(dir.path());
    let mut opts = env.options("webhook-0");
    opts.webhook = Some(WebhookOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls,
        failure_policy: FailurePolicy::Fail,
        validate_timeout: Duration::from_secs(5),
        reload_interval: Duration::from_secs(1),
    });
    let op = portcullis_operator::run::start(client.clone(), opts)
        .await
        .expect("operator");
    let port = op.webhook_addr.expect("the webhook is served").port();
    let metrics = op.metrics.clone();
    env.operators.push(op);
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs
        .create(&PostParams::default(), &configuration(&env, port, &ca_pem))
        .await
        .expect("webhook registered");

    let ns = env.ns.clone();
    env.apply_tenant(
        "",
        portcullis_operator::crd::TenantSpec {
            allowed_namespaces: vec![ns],
            ..Default::default()
        },
    )
    .await;
    let bad = role_yaml(&env, "writer", "contxt.mfa == true");
    // The API server picks a new configuration up within a moment.
    let start = Instant::now();
    let stderr = loop {
        let (ok, _, stderr) = kubectl_run(&k, &["apply", "--dry-run=server", "-f", "-"], &bad);
        if !ok {
            break stderr;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the webhook never refused the invalid Role"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // `--dry-run=server` reports the refusal with the field path and the
    // service's rule, and creates nothing.
    // A 422 with causes: kubectl prints `The Role "writer" is invalid:` and each cause.
    assert!(stderr.contains("\"writer\" is invalid"), "{stderr}");
    assert!(stderr.contains("spec.statements[1].condition:"), "{stderr}");
    assert!(stderr.contains("contxt"), "{stderr}");
    // A real apply is refused the same way.
    let (ok, _, stderr2) = kubectl_run(&k, &["apply", "-f", "-"], &bad);
    assert!(!ok);
    assert!(stderr2.contains("spec.statements[1].condition:"), "{stderr2}");
    assert!(env.roles(&env.ns).get_opt("writer").await.expect("get").is_none());

    // A valid Role: a server dry run admits it without creating it...
    let good = role_yaml(&env, "writer", "context.mfa == true");
    let (ok, stdout, stderr) = kubectl_run(&k, &["apply", "--dry-run=server", "-f", "-"], &good);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("(server dry run)"), "{stdout}");
    assert!(env.roles(&env.ns).get_opt("writer").await.expect("get").is_none());
    // ...and an apply creates it, and the operator reconciles it.
    let (ok, _, stderr) = kubectl_run(&k, &["apply", "-f", "-"], &good);
    assert!(ok, "{stderr}");
    let (status, reason, _) = wait_reason("Role writer", "Applied", || {
        let api = env.roles(&env.ns);
        async move {
            api.get_opt("writer")
                .await
                .ok()
                .flatten()
                .and_then(|r| ready(r.status.as_ref()))
        }
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Applied"));

    // A Vault's bindings are checked by the service too, named by their paths.
    let vault = format!(
        r#"apiVersion: portcullis.dev/v1alpha1
kind: Vault
metadata:
  name: docs
  namespace: {ns}
  labels: {{ "{TEST_LABEL}": "{id}" }}
spec:
  tenant: {tenant}
  bindings:
    - {{ subject: "user:alice", role: writer }}
    - {{ subject: "user:bob", role: writer, condition: "request.time >" }}
"#,
        ns = env.ns,
        id = env.id,
        tenant = env.tenant_name(""),
    );
    let (ok, _, stderr) = kubectl_run(&k, &["apply", "-f", "-"], &vault);
    assert!(!ok);
    assert!(stderr.contains("spec.bindings[1].condition:"), "{stderr}");
    assert!(!stderr.contains("spec.bindings[0]"), "{stderr}");

    // The service down: a spec change is refused, saying why and by which
    // policy; an update leaving the spec alone still goes through.
    if let Some(s) = env.service.take() {
        s.shutdown().await;
    }
    let changed = role_yaml(&env, "writer", "context.mfa == false");
    let (ok, _, stderr) = kubectl_run(&k, &["apply", "-f", "-"], &changed);
    assert!(!ok);
    assert!(stderr.contains("could not validate"), "{stderr}");
    assert!(stderr.contains("failurePolicy is Fail"), "{stderr}");
    let (ok, _, stderr) = kubectl_run(
        &k,
        &[
            "label",
            "--overwrite",
            "-n",
            &env.ns,
            "roles.portcullis.dev",
            "writer",
            "team=docs",
        ],
        "",
    );
    assert!(ok, "a metadata-only update is never refused: {stderr}");

    let verdicts = metrics.render();
    for v in ["refused", "admitted", "unvalidated_refused", "skipped"] {
        assert!(
            verdicts.contains(&format!(
                "portcullis_operator_admission_reviews_total{{kind=\"Role\",verdict=\"{v}\"}}"
            )),
            "{v}: {verdicts}"
        );
    }

    // The webhook goes first, so the objects can be deleted without it.
    configs
        .delete(&config.name_any(), &DeleteParams::default())
        .await
        .expect("webhook removed");
    env.restart_service_empty().await;
    env.cleanup().await;
}
