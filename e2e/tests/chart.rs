//! The Helm chart: lint, render every variant, validate the manifests
//! against an API server, install and upgrade.

use std::path::Path;

use portcullis_e2e::*;

struct Variant {
    name: &'static str,
    set: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "foundationdb (default)",
        set: &[],
    },
    Variant {
        name: "embedded",
        set: &["store.type=embedded"],
    },
    Variant {
        name: "existing secret",
        set: &["apiKeys.existingSecret=my-keys"],
    },
    Variant {
        name: "foundationdb, created cluster, service monitor, extra keys",
        set: &[
            "store.foundationdb.createCluster=true",
            "metrics.serviceMonitor.enabled=true",
            "apiKeys.extraKeys[0].name=frontend",
            "apiKeys.extraKeys[0].sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "apiKeys.extraKeys[0].scopes[0]=check",
            "apiKeys.extraKeys[0].tenants[0]=acme",
        ],
    },
    Variant {
        name: "webhook with cert-manager, Ignore",
        set: &[
            "webhook.certManager.enabled=true",
            "webhook.failurePolicy=Ignore",
            "webhook.namespaceSelector.matchLabels.portcullis=enabled",
        ],
    },
    Variant {
        name: "webhook off",
        set: &["webhook.enabled=false"],
    },
    Variant {
        name: "two shards",
        set: SHARDS,
    },
    Variant {
        name: "tls",
        set: &[
            "service.tls.enabled=true",
            "service.tls.secretName=portcullis-tls",
            "service.tls.clientCASecretName=clients-ca",
        ],
    },
];

const SHARDS: &[&str] = &[
    "shards[0].name=big",
    "shards[0].tenants[0]=acme/**",
    "shards[0].tenants[1]=globex",
    "shards[0].replicas=2",
    "shards[1].name=rest",
    "shards[1].tenants[0]=**",
];

fn containers(workload: &serde_yaml::Value) -> Vec<&serde_yaml::Value> {
    let spec = &workload["spec"]["template"]["spec"];
    let mut out: Vec<&serde_yaml::Value> = spec["containers"]
        .as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    if let Some(init) = spec["initContainers"].as_sequence() {
        out.extend(init.iter());
    }
    out
}

#[test]
fn chart_lints_and_renders_every_variant() {
    let Some(helm) = helm() else { return };
    let chart = chart();
    let chart_s = chart.to_str().expect("utf-8 path");
    for v in VARIANTS {
        // Not --strict: linting without a cluster renders for Kubernetes
        // 1.20-era capabilities, where the PDB is (rightly) policy/v1beta1,
        // which lint reports as deprecated.
        let out = run(&helm, &args(&["lint", chart_s], v.set), &[], None, false);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "lint of {}: {text}", v.name);
        assert!(
            text.contains("0 chart(s) failed") && !text.contains("[ERROR]"),
            "lint of {}: {text}",
            v.name
        );

        let docs = render(&helm, v.set, &["--api-versions", "policy/v1/PodDisruptionBudget"]);
        assert!(!docs.is_empty(), "{} renders", v.name);
        // Hardened pods everywhere.
        for w in docs
            .iter()
            .filter(|d| matches!(kind_of(d), "Deployment" | "StatefulSet"))
        {
            let pod = &w["spec"]["template"]["spec"];
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"],
                serde_yaml::Value::Bool(true),
                "{}: {}",
                v.name,
                name_of(w)
            );
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault")
            );
            for c in containers(w) {
                let sc = &c["securityContext"];
                assert_eq!(
                    sc["readOnlyRootFilesystem"],
                    serde_yaml::Value::Bool(true),
                    "{}: {}",
                    v.name,
                    name_of(w)
                );
                assert_eq!(sc["allowPrivilegeEscalation"], serde_yaml::Value::Bool(false));
                assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
                assert!(c["resources"]["requests"].is_mapping(), "{}: resources", name_of(w));
            }
        }
        let operator = find(&docs, "Deployment", "rel-portcullis-operator").expect("operator deployment");
        assert_eq!(operator["spec"]["replicas"].as_u64(), Some(2));
        assert!(find(&docs, "ClusterRole", "rel-portcullis-operator").is_some());
        assert!(find(&docs, "Service", "rel-portcullis").is_some());
        assert!(find(&docs, "Service", "rel-portcullis-metrics").is_some());
    }

    // FoundationDB: a Deployment of 3 spread replicas reading the operator-made ConfigMap, with a PDB.
    let docs = render(&helm, &[], &["--api-versions", "policy/v1/PodDisruptionBudget"]);
    let svc = find(&docs, "Deployment", "rel-portcullis").expect("service deployment");
    assert_eq!(svc["spec"]["replicas"].as_u64(), Some(3));
    assert!(svc["spec"]["template"]["spec"]["topologySpreadConstraints"].is_sequence());
    let text = serde_yaml::to_string(svc).unwrap();
    assert!(
        text.contains("portcullis-fdb-config"),
        "the FoundationDB operator's ConfigMap"
    );
    assert!(text.contains("--store=foundationdb"));
    assert!(text.contains("health"), "probes use the gRPC health service");
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "rel-portcullis").unwrap()["apiVersion"].as_str(),
        Some("policy/v1")
    );
    let old = render(&helm, &[], &[]);
    let pdb = find(&old, "PodDisruptionBudget", "rel-portcullis").unwrap();
    assert_eq!(
        pdb["apiVersion"].as_str(),
        Some("policy/v1beta1"),
        "without policy/v1 (Kubernetes 1.20)"
    );
    assert!(find(&docs, "FoundationDBCluster", "portcullis-fdb").is_none());
    // A generated key Secret: the operator's key and a keys file holding only its hash.
    let secret = find(&docs, "Secret", "rel-portcullis-api-keys").expect("generated secret");
    let key = secret["stringData"]["operator-key"].as_str().unwrap();
    let keys_yaml = secret["stringData"]["keys.yaml"].as_str().unwrap();
    assert_eq!(key.len(), 48);
    assert!(!keys_yaml.contains(key), "the keys file holds no secret");

    // Embedded: one replica with a volume claim, no PDB.
    let docs = render(&helm, &["store.type=embedded"], &[]);
    let ss = find(&docs, "StatefulSet", "rel-portcullis").expect("statefulset");
    assert_eq!(ss["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(
        ss["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("10Gi")
    );
    assert!(find(&docs, "PodDisruptionBudget", "rel-portcullis").is_none());
    assert!(find(&docs, "Deployment", "rel-portcullis").is_none());

    // An existing Secret replaces the generated one.
    let docs = render(&helm, &["apiKeys.existingSecret=my-keys"], &[]);
    assert!(find(&docs, "Secret", "rel-portcullis-api-keys").is_none());
    assert!(serde_yaml::to_string(&docs).unwrap().contains("secretName: my-keys"));

    // The created cluster and the service monitor.
    let docs = render(&helm, VARIANTS[3].set, &[]);
    assert!(find(&docs, "FoundationDBCluster", "portcullis-fdb").is_some());
    assert!(find(&docs, "ServiceMonitor", "rel-portcullis").is_some());
    let secret = find(&docs, "Secret", "rel-portcullis-api-keys").unwrap();
    assert!(secret["stringData"]["keys.yaml"].as_str().unwrap().contains("frontend"));

    // The webhook: generated certificate whose CA is the configuration's
    // caBundle, served by the operator with the failure policy it declares.
    let docs = render(&helm, &[], &[]);
    let hook =
        find(&docs, "ValidatingWebhookConfiguration", "rel-portcullis-portcullis").expect("webhook configuration");
    let w = &hook["webhooks"][0];
    let tls = find(&docs, "Secret", "rel-portcullis-webhook-tls").expect("webhook certificate");
    assert_eq!(w["clientConfig"]["caBundle"], tls["data"]["ca.crt"]);
    assert_eq!(
        w["clientConfig"]["service"]["name"].as_str(),
        Some("rel-portcullis-operator-webhook")
    );
    assert_eq!(w["failurePolicy"].as_str(), Some("Fail"));
    assert_eq!(w["sideEffects"].as_str(), Some("None"));
    assert!(find(&docs, "Service", "rel-portcullis-operator-webhook").is_some());
    let op = serde_yaml::to_string(find(&docs, "Deployment", "rel-portcullis-operator").unwrap()).unwrap();
    assert!(op.contains("--webhook-listen=0.0.0.0:8443"), "{op}");
    assert!(op.contains("--webhook-failure-policy=fail"), "{op}");
    assert!(op.contains("--webhook-validate-timeout-ms=8500"), "{op}");
    assert!(op.contains("secretName: rel-portcullis-webhook-tls"), "{op}");
    // cert-manager: it issues the certificate and injects the CA.
    let docs = render(&helm, VARIANTS[4].set, &[]);
    let hook = find(&docs, "ValidatingWebhookConfiguration", "rel-portcullis-portcullis").unwrap();
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str(),
        Some("portcullis/rel-portcullis-webhook")
    );
    assert!(hook["webhooks"][0]["clientConfig"]["caBundle"].is_null());
    assert_eq!(hook["webhooks"][0]["failurePolicy"].as_str(), Some("Ignore"));
    assert!(find(&docs, "Certificate", "rel-portcullis-webhook").is_some());
    assert!(find(&docs, "Issuer", "rel-portcullis-webhook").is_some());
    assert!(!docs.iter().any(|d| name_of(d) == "rel-portcullis-webhook-tls"));
    let op = serde_yaml::to_string(find(&docs, "Deployment", "rel-portcullis-operator").unwrap()).unwrap();
    assert!(op.contains("--webhook-failure-policy=ignore"), "{op}");
    // Off: no configuration, no flags.
    let docs = render(&helm, &["webhook.enabled=false"], &[]);
    assert!(find(&docs, "ValidatingWebhookConfiguration", "rel-portcullis-portcullis").is_none());
    let op = serde_yaml::to_string(find(&docs, "Deployment", "rel-portcullis-operator").unwrap()).unwrap();
    assert!(!op.contains("--webhook"), "{op}");

    // The values schema rejects what it should, naming the value.
    let out = run(
        &helm,
        &["template", "rel", chart_s, "--set", "webhook.failurePolicy=Sometimes"],
        &[],
        None,
        false,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhook.failurePolicy"));
    let out = run(
        &helm,
        &["template", "rel", chart_s, "--set", "store.type=bogus"],
        &[],
        None,
        false,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("store.type"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &helm,
        &[
            "template",
            "rel",
            chart_s,
            "--set",
            "apiKeys.extraKeys[0].name=x",
            "--set",
            "apiKeys.extraKeys[0].sha256=nothex",
            "--set",
            "apiKeys.extraKeys[0].scopes[0]=check",
        ],
        &[],
        None,
        false,
    );
    assert!(!out.status.success(), "a bad sha256 is refused");
}

#[test]
fn shards_render_one_deployment_and_service_each_with_their_map() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, SHARDS, &[]);
    assert!(
        find(&docs, "Deployment", "rel-portcullis").is_none(),
        "no unsharded workload"
    );
    for (name, replicas) in [("big", 2), ("rest", 3)] {
        let d = find(&docs, "Deployment", &format!("rel-portcullis-{name}")).expect("a Deployment per shard");
        assert_eq!(d["spec"]["replicas"].as_i64(), Some(replicas), "{name}");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["portcullis.dev/shard"].as_str(),
            Some(name)
        );
        let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(args.contains(&format!("--shard={name}").as_str()), "{args:?}");
        assert!(args.contains(&"--shard-map=/etc/portcullis/shards/shards.yaml"));
        let svc = find(&docs, "Service", &format!("rel-portcullis-{name}")).expect("a Service per shard");
        assert_eq!(svc["spec"]["selector"]["portcullis.dev/shard"].as_str(), Some(name));
        let pdb = find(&docs, "PodDisruptionBudget", &format!("rel-portcullis-{name}")).expect("a budget per shard");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"]["portcullis.dev/shard"].as_str(),
            Some(name)
        );
    }
    assert!(
        find(&docs, "Service", "rel-portcullis").is_some(),
        "admin calls reach any shard"
    );
    // The map the replicas and the callers read is one the client parses,
    // routing each tenant to its shard's Service.
    let cm = find(&docs, "ConfigMap", "rel-portcullis-shards").expect("the shard map");
    let map = portcullis_client::shard::ShardMap::parse(cm["data"]["shards.yaml"].as_str().unwrap()).unwrap();
    let big = map.route("acme/eng").unwrap();
    assert_eq!(
        (big.name.as_str(), big.address.as_str()),
        ("big", "http://rel-portcullis-big.portcullis.svc:50051")
    );
    assert_eq!(map.route("globex").unwrap().name, "big");
    assert_eq!(map.route("initech").unwrap().name, "rest");
    // Shards share one store: the embedded one cannot be shared.
    let chart = chart();
    let mut a = args(&["template", "rel", chart.to_str().unwrap()], SHARDS);
    a.extend_from_slice(&["--set", "store.type=embedded"]);
    let out = run(&helm, &a, &[], None, false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shards need store.type foundationdb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for f in ["tenants", "vaults", "roles"] {
        let a = std::fs::read_to_string(repo().join(format!("crds/{f}.portcullis.dev.yaml"))).unwrap();
        let b = std::fs::read_to_string(chart().join(format!("crds/{f}.portcullis.dev.yaml"))).unwrap();
        assert_eq!(a, b, "charts/portcullis/crds/{f} differs from crds/{f}: run crdgen");
    }
}

/// Permissive CRDs for the third-party kinds the chart can render, so the
/// server-side dry run can place them; their own schemas are their
/// operators' business.
const STUB_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: foundationdbclusters.apps.foundationdb.org }
spec:
  group: apps.foundationdb.org
  names: { kind: FoundationDBCluster, plural: foundationdbclusters, singular: foundationdbcluster }
  scope: Namespaced
  versions:
    - name: v1beta2
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: servicemonitors.monitoring.coreos.com }
spec:
  group: monitoring.coreos.com
  names: { kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: certificates.cert-manager.io }
spec:
  group: cert-manager.io
  names: { kind: Certificate, plural: certificates, singular: certificate }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: issuers.cert-manager.io }
spec:
  group: cert-manager.io
  names: { kind: Issuer, plural: issuers, singular: issuer }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: { openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true } }
"#;

#[test]
fn rendered_manifests_validate_against_the_api_server_and_install() {
    let (Some(helm), Some(kubectl), Some(kubeconfig)) = (helm(), kubectl(), kubeconfig()) else {
        return;
    };
    let env: &[(&str, &Path)] = &[("KUBECONFIG", &kubeconfig)];
    let chart = chart();
    let chart_s = chart.to_str().expect("utf-8 path");
    run(&kubectl, &["apply", "-f", "-"], env, Some(STUB_CRDS), true);
    run(
        &kubectl,
        &["apply", "-f", chart.join("crds").to_str().unwrap()],
        env,
        None,
        true,
    );
    let ns = format!("chart-{}", free_port());
    let scoped = format!("webhook.objectSelector.matchLabels.chart-test={ns}");
    run(&kubectl, &["create", "namespace", &ns], env, None, true);
    std::thread::sleep(std::time::Duration::from_secs(1));
    // Every variant, rendered with the server's capabilities, passes the server's validation.
    for v in VARIANTS {
        let a = args(&["template", "rel", chart_s, "--namespace", &ns, "--validate"], v.set);
        let out = run(&helm, &a, env, None, true);
        let manifest = String::from_utf8_lossy(&out.stdout).to_string();
        let out = run(
            &kubectl,
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            env,
            Some(&manifest),
            false,
        );
        assert!(
            out.status.success(),
            "{}: server-side validation failed:\n{}",
            v.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Install: everything it should create exists.
    run(
        &helm,
        &[
            "install",
            "rel",
            chart_s,
            "-n",
            &ns,
            "--set",
            "store.type=embedded",
            // Its operator cannot run here (no kubelet); the selector keeps the
            // installed webhook away from every other test's objects.
            "--set",
            &scoped,
            "--wait=false",
        ],
        env,
        None,
        true,
    );
    for (kind, name) in [
        ("statefulset", "rel-portcullis"),
        ("deployment", "rel-portcullis-operator"),
        ("service", "rel-portcullis"),
        ("service", "rel-portcullis-metrics"),
        ("service", "rel-portcullis-operator-metrics"),
        ("secret", "rel-portcullis-api-keys"),
        ("serviceaccount", "rel-portcullis-operator"),
        ("role", "rel-portcullis-operator"),
        ("rolebinding", "rel-portcullis-operator"),
        ("secret", "rel-portcullis-webhook-tls"),
        ("service", "rel-portcullis-operator-webhook"),
    ] {
        run(&kubectl, &["get", "-n", &ns, kind, name], env, None, true);
    }
    run(
        &kubectl,
        &["get", "clusterrole", "rel-portcullis-operator"],
        env,
        None,
        true,
    );
    let secret = |env: &[(&str, &Path)]| {
        let out = run(
            &kubectl,
            &[
                "get",
                "-n",
                &ns,
                "secret",
                "rel-portcullis-api-keys",
                "-o",
                "jsonpath={.data.operator-key}",
            ],
            env,
            None,
            true,
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = secret(env);
    assert!(!before.is_empty());
    let ca_bundle = |env: &[(&str, &Path)]| {
        let hook = format!("rel-portcullis-{ns}");
        let out = run(
            &kubectl,
            &[
                "get",
                "validatingwebhookconfiguration",
                &hook,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            env,
            None,
            true,
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let ca_before = ca_bundle(env);
    assert!(!ca_before.is_empty(), "the installed webhook has a caBundle");
    // Upgrade (and a changed value): the generated key is kept.
    run(
        &helm,
        &[
            "upgrade",
            "rel",
            chart_s,
            "-n",
            &ns,
            "--set",
            "store.type=embedded",
            "--set",
            "operator.replicas=3",
            "--set",
            &scoped,
            "--wait=false",
        ],
        env,
        None,
        true,
    );
    assert_eq!(secret(env), before, "helm upgrade keeps the generated key");
    assert_eq!(ca_bundle(env), ca_before, "helm upgrade keeps the webhook's CA");
    let out = run(
        &kubectl,
        &[
            "get",
            "-n",
            &ns,
            "deployment",
            "rel-portcullis-operator",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        env,
        None,
        true,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3");
    // Installing on this 1.20-era server picks the PDB API from its capabilities.
    let out = run(
        &helm,
        &[
            "template",
            "rel",
            chart_s,
            "-n",
            &ns,
            "--validate",
            "--show-only",
            "templates/pdb.yaml",
        ],
        env,
        None,
        true,
    );
    let pdb = String::from_utf8_lossy(&out.stdout);
    let served_v1 = run(&kubectl, &["api-versions"], env, None, true);
    let want = if String::from_utf8_lossy(&served_v1.stdout)
        .lines()
        .any(|l| l == "policy/v1")
    {
        "policy/v1"
    } else {
        "policy/v1beta1"
    };
    assert!(pdb.contains(&format!("apiVersion: {want}\n")), "{pdb}");
    run(&helm, &["uninstall", "rel", "-n", &ns], env, None, true);
    run(
        &kubectl,
        &["delete", "namespace", &ns, "--wait=false"],
        env,
        None,
        false,
    );
}
