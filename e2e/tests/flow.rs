//! The whole bundle as a user runs it: the chart's CRDs and configuration,
//! the service and the operator as processes, `kubectl apply` of the
//! examples, and CheckPermission answering as declared.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::*;
use portcullis_proto::v1 as pb;
use portcullis_proto::v1::permission_service_client::PermissionServiceClient;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, args: &[&str], env: &[(&str, &Path)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let mut c = Command::new(bin);
    c.args(args).stdout(Stdio::null()).stderr(out);
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(
        c.spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    )
}

fn yaml_str<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_else(|| panic!("{path:?} missing"))
}

type Perm = PermissionServiceClient<portcullis_client::Authed>;

async fn check(
    p: &mut Perm,
    tenant: &str,
    vault: &str,
    subject: &str,
    action: &str,
    resource: &str,
    context: Option<(&str, &str)>,
) -> Result<pb::Reason, tonic::Status> {
    let context = context.map(|(k, v)| prost_types_struct(k, v));
    let r = p
        .check_permission(pb::CheckPermissionRequest {
            tenant: tenant.into(),
            vault: vault.into(),
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            context,
            consistency: Some(pb::Consistency {
                requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
            }),
            explain: false,
        })
        .await?;
    Ok(pb::Reason::try_from(r.into_inner().reason).unwrap_or(pb::Reason::Unspecified))
}

fn prost_types_struct(k: &str, v: &str) -> ::prost_types::Struct {
    ::prost_types::Struct {
        fields: [(
            k.to_string(),
            ::prost_types::Value {
                kind: Some(::prost_types::value::Kind::StringValue(v.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// (tenant, vault, subject, action, resource)
type Request<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

async fn eventually(p: &mut Perm, what: &str, req: Request<'_>, want: Result<pb::Reason, tonic::Code>) {
    let (tenant, vault, subject, action, resource) = req;
    let start = Instant::now();
    loop {
        let got = check(p, tenant, vault, subject, action, resource, None)
            .await
            .map_err(|s| s.code());
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_ready(kubectl: &Path, env: &[(&str, &Path)]) -> Result<usize, String> {
    let out = run(
        kubectl,
        &[
            "get",
            "tenants.portcullis.dev,vaults.portcullis.dev,roles.portcullis.dev",
            "-A",
            "-o",
            "json",
        ],
        env,
        None,
        true,
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    // Only the examples' objects: the cluster may hold others.
    let items: Vec<serde_json::Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| {
            let name = i["metadata"]["name"].as_str().unwrap_or("");
            let ns = i["metadata"]["namespace"].as_str().unwrap_or("");
            matches!(ns, "acme-platform" | "acme-finance")
                || (ns.is_empty() && (name == "acme" || name.starts_with("acme.")))
        })
        .collect();
    let mut not_ready = Vec::new();
    for i in &items {
        let ready = i["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            });
        if ready.as_ref().map(|r| r.0.as_str()) != Some("True") {
            not_ready.push(format!("{} {}: {ready:?}", i["kind"], i["metadata"]["name"]));
        }
    }
    if items.is_empty() || !not_ready.is_empty() {
        Err(not_ready.join(", "))
    } else {
        Ok(items.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_as_a_user_runs_it() {
    let (Some(helm), Some(kubectl), Some(kubeconfig)) = (helm(), kubectl(), kubeconfig()) else {
        return;
    };
    let env: &[(&str, &Path)] = &[("KUBECONFIG", &kubeconfig)];
    let bins = bin_dir();
    let (service_bin, operator_bin) = (bins.join("portcullis"), bins.join("portcullis-operator"));
    assert!(
        service_bin.is_file() && operator_bin.is_file(),
        "build the binaries first (cargo test --workspace builds them)"
    );
    let tmp = tempfile::tempdir().unwrap();

    // 1. The CRDs, from the chart.
    run(
        &kubectl,
        &["apply", "-f", chart().join("crds").to_str().unwrap()],
        env,
        None,
        true,
    );

    // 2. The chart's configuration: its generated keys Secret.
    let out = run(
        &helm,
        &[
            "template",
            "rel",
            chart().to_str().unwrap(),
            "--show-only",
            "templates/secret.yaml",
        ],
        &[],
        None,
        true,
    );
    let secret = docs(&String::from_utf8_lossy(&out.stdout)).pop().expect("secret");
    let keys_file = tmp.path().join("keys.yaml");
    let key_file = tmp.path().join("operator-key");
    std::fs::write(&keys_file, yaml_str(&secret, &["stringData", "keys.yaml"])).unwrap();
    let operator_key = yaml_str(&secret, &["stringData", "operator-key"]).to_string();
    std::fs::write(&key_file, &operator_key).unwrap();

    // 3. The service and the operator, as processes, with the chart's flags.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let data: PathBuf = tmp.path().join("data");
    let _service = spawn(
        &service_bin,
        &[
            "serve",
            "--store=embedded",
            &format!("--data-dir={}", data.display()),
            &format!("--listen=127.0.0.1:{port}"),
            "--metrics-listen=127.0.0.1:0",
            &format!("--auth-keys-file={}", keys_file.display()),
            "--log-format=json",
        ],
        &[],
        &tmp.path().join("service.log"),
    );
    let start = Instant::now();
    loop {
        let out = run(&service_bin, &["health", "--endpoint", &endpoint], &[], None, false);
        if out.status.success() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "service never SERVING");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _operator = spawn(
        &operator_bin,
        &[
            &format!("--endpoint={endpoint}"),
            &format!("--api-key-file={}", key_file.display()),
            "--lease-namespace=default",
            "--lease-name=portcullis-e2e",
            "--lease-seconds=5",
            "--metrics-listen=127.0.0.1:0",
            "--log-format=json",
        ],
        env,
        &tmp.path().join("operator.log"),
    );

    // 4. The examples, with kubectl.
    run(
        &kubectl,
        &["apply", "-f", repo().join("examples/k8s").to_str().unwrap()],
        env,
        None,
        true,
    );
    let start = Instant::now();
    let n = loop {
        match all_ready(&kubectl, env) {
            Ok(n) => break n,
            Err(why) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "not every object became Ready: {why}\noperator log:\n{}",
                    std::fs::read_to_string(tmp.path().join("operator.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    };
    assert_eq!(n, 10, "4 tenants, 4 roles, 2 vaults");

    // 5. CheckPermission over gRPC answers as declared.
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut p: Perm = PermissionServiceClient::with_interceptor(
        channel,
        portcullis_client::Bearer::new(&operator_key).expect("printable key"),
    );
    let platform = ("acme/eng/platform", "docs");
    use pb::Reason::*;
    let cases: &[(&str, &str, &str, pb::Reason)] = &[
        ("user:carol", "documents:read", "document:design.md", Allowed),
        ("user:bob", "documents:write", "document:design.md", Allowed),
        ("user:bob", "documents:read", "document:security/keys", ExplicitDeny),
        ("user:dave", "documents:read", "document:runbooks/restart.md", Allowed),
        ("user:dave", "documents:read", "document:design.md", NoMatch),
        ("user:alice", "documents:delete", "document:design.md", ExplicitDeny),
        ("user:mallory", "documents:read", "document:design.md", NoMatch),
    ];
    for (subject, action, resource, want) in cases {
        let got = check(&mut p, platform.0, platform.1, subject, action, resource, None)
            .await
            .unwrap();
        assert_eq!(got, *want, "{subject} {action} {resource}");
    }
    assert_eq!(
        check(
            &mut p,
            platform.0,
            platform.1,
            "user:alice",
            "documents:delete",
            "document:x",
            Some(("mfa", "yes"))
        )
        .await
        .unwrap(),
        ExplicitDeny,
        "mfa must be true, not a string"
    );
    assert_eq!(
        check(
            &mut p,
            "acme/finance",
            "billing",
            "user:erin",
            "billing:read",
            "invoice:42",
            None
        )
        .await
        .unwrap(),
        Allowed
    );
    assert_eq!(
        check(
            &mut p,
            "acme/finance",
            "billing",
            "service:finance-bot",
            "billing:read",
            "invoice:42",
            Some(("network", "office"))
        )
        .await
        .unwrap(),
        Allowed
    );
    assert_eq!(
        check(
            &mut p,
            "acme/finance",
            "billing",
            "service:finance-bot",
            "billing:read",
            "invoice:42",
            Some(("network", "home"))
        )
        .await
        .unwrap(),
        NoMatch
    );
    let e = check(
        &mut p,
        platform.0,
        platform.1,
        "bob",
        "documents:read",
        "document:x",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // 6. Change a Role with kubectl apply: writers no longer write.
    let roles = std::fs::read_to_string(repo().join("examples/k8s/20-roles.yaml")).unwrap();
    let edited = roles.replace(
        r#"actions: ["documents:write", "documents:comment"]"#,
        r#"actions: ["documents:comment"]"#,
    );
    assert_ne!(roles, edited);
    run(&kubectl, &["apply", "-f", "-"], env, Some(&edited), true);
    eventually(
        &mut p,
        "edited role",
        (
            platform.0,
            platform.1,
            "user:bob",
            "documents:write",
            "document:design.md",
        ),
        Ok(NoMatch),
    )
    .await;
    assert_eq!(
        check(
            &mut p,
            platform.0,
            platform.1,
            "user:bob",
            "documents:comment",
            "document:design.md",
            None
        )
        .await
        .unwrap(),
        Allowed
    );

    // 7. Delete a Vault: its checks become NOT_FOUND.
    run(
        &kubectl,
        &["delete", "vault.portcullis.dev", "billing", "-n", "acme-finance"],
        env,
        None,
        true,
    );
    eventually(
        &mut p,
        "deleted vault",
        ("acme/finance", "billing", "user:erin", "billing:read", "invoice:42"),
        Err(tonic::Code::NotFound),
    )
    .await;

    // Tear down while the operator still runs, so finalizers complete.
    run(
        &kubectl,
        &[
            "delete",
            "-f",
            repo().join("examples/k8s").to_str().unwrap(),
            "--wait=false",
        ],
        env,
        None,
        false,
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let out = run(
            &kubectl,
            &["get", "tenants.portcullis.dev", "-o", "name"],
            env,
            None,
            false,
        );
        if !String::from_utf8_lossy(&out.stdout).contains("tenant.portcullis.dev/acme") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
