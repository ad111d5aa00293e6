//! Writes the fuzzers' starting corpora: one directory per target under the given
//! directory (default `node/fuzz/corpus`). Used by `scripts/fuzz.sh`.
//!
//! ```text
//! cargo run -p dynamo-node --features fuzzing --example fuzz_seeds -- node/fuzz/corpus
//! ```

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "node/fuzz/corpus".to_string());
    let dir = std::path::Path::new(&dir);
    for (i, (target, input)) in dynamo::fuzzing::seed_inputs().into_iter().enumerate() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)
            .with_context(|| format!("creating {}", target_dir.display()))?;
        let path = target_dir.join(format!("seed-{i:03}"));
        std::fs::write(&path, input).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("seeds written under {}", dir.display());
    Ok(())
}
