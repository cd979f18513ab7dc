//! The committed CRD YAML is exactly what the Rust types generate (run
//! `cargo run -p portcullis-operator --bin crdgen` after changing them), and
//! the chart carries the same files.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("crds")];
    let chart = root.join("charts/portcullis/crds");
    if chart.exists() {
        dirs.push(chart);
    }
    for dir in dirs {
        for (plural, crd) in portcullis_operator::crd::crds() {
            let path = dir.join(format!("{plural}.portcullis.dev.yaml"));
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                committed,
                portcullis_operator::crd::crd_yaml(&crd),
                "{} is stale: run `cargo run -p portcullis-operator --bin crdgen`",
                path.display()
            );
        }
    }
}

#[test]
fn crds_carry_the_conventions() {
    for (plural, crd) in portcullis_operator::crd::crds() {
        let yaml = portcullis_operator::crd::crd_yaml(&crd);
        assert!(yaml.contains("- portcullis"), "{plural}: category");
        assert!(
            yaml.contains("jsonPath: .status.conditions[?(@.type==\"Ready\")].status"),
            "{plural}: Ready column"
        );
        assert!(
            !yaml.contains("x-kubernetes-validations"),
            "{plural}: no CEL rules (1.20 servers)"
        );
        assert!(
            yaml.contains("shortNames:\n    - p"),
            "{plural}: a short name not colliding with built-in kinds"
        );
    }
}
