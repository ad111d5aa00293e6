//! Writes the `DynamoCluster` CRD: `crdgen [PATH]` (default `crds/dynamocluster.yaml` at the
//! workspace root), or `crdgen -` for standard output.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let yaml = dynamo_operator::crd::crd_yaml()?;
    let arg = std::env::args().nth(1);
    if arg.as_deref() == Some("-") {
        print!("{yaml}");
        return Ok(());
    }
    let path = arg.map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/dynamocluster.yaml")
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, yaml)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
