//! Writes `crds/*.yaml` (and the chart's copy, when present) from the Rust
//! types. `cargo run -p portcullis-operator --bin crdgen [-- DIR...]`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        dirs.push(root.join("crds"));
        let chart = root.join("charts/portcullis/crds");
        if chart.exists() {
            dirs.push(chart);
        }
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (plural, crd) in portcullis_operator::crd::crds() {
            let path = dir.join(format!("{plural}.portcullis.dev.yaml"));
            std::fs::write(&path, portcullis_operator::crd::crd_yaml(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
