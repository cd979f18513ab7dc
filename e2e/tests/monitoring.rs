//! The chart's Grafana dashboard and Prometheus alert rules: they render,
//! parse, refer only to metrics the server or the operator registers, and
//! each alert's runbook is a README section. `promtool check rules` runs
//! when promtool is installed (`.ci/run` installs Debian's `prometheus`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use portcullis_e2e::*;

const ENABLED: &[&str] = &["grafana.dashboards.enabled=true", "prometheus.rules.enabled=true"];

/// Every family the server and the operator register, series or not.
fn families() -> BTreeSet<String> {
    let server = portcullis::telemetry::Metrics::new();
    let operator = portcullis_operator::metrics::Metrics::new();
    server.families().iter().chain(operator.families()).cloned().collect()
}

/// The metric names a PromQL expression reads (ours all start with
/// `portcullis_` or `grpc_server_`), a histogram's series suffix removed.
fn metrics_in(expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = ["portcullis_", "grpc_server_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| known.contains(*b)))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PORTCULLIS_TEST_PROMTOOL") {
        return Some(p.into());
    }
    let found = std::process::Command::new("promtool").arg("--version").output().is_ok();
    found.then(|| PathBuf::from("promtool"))
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_dashboard_reads_only_metrics_that_exist() {
    let Some(helm) = helm() else { return };
    let known = families();
    assert!(known.contains("grpc_server_handled_total") && known.contains("portcullis_operator_reconciles_total"));
    let docs = render(&helm, ENABLED, &[]);
    let cm = find(&docs, "ConfigMap", "rel-portcullis-dashboard").expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    let json = cm["data"]["portcullis.json"].as_str().expect("the dashboard JSON");
    let dash: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "portcullis");
    let panels: Vec<_> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    let mut used = BTreeSet::new();
    for p in &panels {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} queries something", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("a PromQL target");
            let names = metrics_in(expr, &known);
            assert!(
                !names.is_empty(),
                "panel {}: {expr} reads no Portcullis metric",
                p["title"]
            );
            for n in names {
                assert!(
                    known.contains(&n),
                    "panel {} reads {n}, which nothing registers",
                    p["title"]
                );
                used.insert(n);
            }
        }
    }
    // What the issue asks a dashboard to show.
    for m in [
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "portcullis_check_decisions_total",
        "portcullis_tenant_check_decisions_total",
        "portcullis_index_revision",
        "portcullis_index_revision_lag",
        "portcullis_leader",
        "portcullis_leader_epoch",
        "portcullis_job_runs_total",
        "portcullis_decision_log_dropped_total",
        "portcullis_operator_reconciles_total",
        "portcullis_operator_reconcile_errors_total",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
    // Off by default.
    let docs = render(&helm, &[], &[]);
    assert!(find(&docs, "ConfigMap", "rel-portcullis-dashboard").is_none());
    assert!(!docs.iter().any(|d| kind_of(d) == "PrometheusRule"));
}

#[test]
fn alert_rules_check_and_link_their_runbooks() {
    let Some(helm) = helm() else { return };
    let known = families();
    let docs = render(&helm, &[ENABLED, &["prometheus.rules.errorRatio=0.05"]].concat(), &[]);
    let rule = find(&docs, "PrometheusRule", "rel-portcullis").expect("the PrometheusRule");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(anchor)
        .collect();
    let rules = rule["spec"]["groups"][0]["rules"].as_sequence().expect("rules");
    let mut alerts = BTreeSet::new();
    for r in rules {
        let alert = r["alert"].as_str().expect("an alert name");
        alerts.insert(alert.to_string());
        let expr = r["expr"].as_str().expect("an expression");
        assert!(
            expr.contains(r#"namespace="portcullis""#),
            "{alert} is confined to the release's namespace"
        );
        for n in metrics_in(expr, &known) {
            assert!(known.contains(&n), "{alert} reads {n}, which nothing registers");
        }
        assert!(r["labels"]["severity"].as_str().is_some(), "{alert} has a severity");
        assert!(r["annotations"]["summary"].as_str().is_some(), "{alert} has a summary");
        let url = r["annotations"]["runbook_url"].as_str().expect("a runbook");
        let (_, a) = url.split_once('#').expect("the runbook names a section");
        assert!(anchors.contains(a), "{alert}: the README has no section #{a}");
    }
    let expected = [
        "PortcullisNoLeader",
        "PortcullisIndexLagging",
        "PortcullisErrorRatioHigh",
        "PortcullisCheckLatencyHigh",
        "PortcullisDecisionLogDropping",
        "PortcullisOperatorReconcileErrors",
        "PortcullisReplicaNotServing",
    ];
    assert_eq!(alerts, expected.iter().map(|s| s.to_string()).collect());
    let ratio = rules.iter().find(|r| r["alert"] == "PortcullisErrorRatioHigh").unwrap();
    assert!(ratio["expr"].as_str().unwrap().ends_with("> 0.05"));

    let Some(promtool) = promtool() else {
        println!("SKIPPED: promtool check rules (no promtool; set PORTCULLIS_TEST_PROMTOOL)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = run(&promtool, &["check", "rules", file.to_str().unwrap()], &[], None, false);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn traces_are_off_unless_an_otlp_endpoint_is_set() {
    let Some(helm) = helm() else { return };
    let args_of = |docs: &[serde_yaml::Value]| -> Vec<String> {
        let w = docs
            .iter()
            .find(|d| kind_of(d) == "Deployment" && name_of(d) == "rel-portcullis")
            .expect("the service Deployment");
        w["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect()
    };
    assert!(
        !args_of(&render(&helm, &[], &[]))
            .iter()
            .any(|a| a.starts_with("--otlp-endpoint"))
    );
    let docs = render(
        &helm,
        &[
            "service.otlpEndpoint=http://otel-collector:4317",
            "service.extraEnv[0].name=OTEL_SERVICE_NAME",
            "service.extraEnv[0].value=authz",
        ],
        &[],
    );
    assert!(args_of(&docs).contains(&"--otlp-endpoint=http://otel-collector:4317".to_string()));
}
