//! `cargo xtask images [debug|release] [OUTDIR]`: Twill's container images as OCI archives
//! (`ctr images import`, `docker load`), built from the workspace's binaries of that profile
//! and Debian's packages, without a registry or a container engine (lab/src/image.rs).

use std::path::{Path, PathBuf};

/// Builds the images; prints one line per archive with its size.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let profile = args.first().map(String::as_str).unwrap_or("release");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join(profile);
    let out = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("images"));
    let tools = twill_lab::state::Tools {
        twill: bin.join("twill"),
        twillctl: bin.join("twillctl"),
        twill_node: bin.join("twill-node"),
    };
    for written in twill_lab::cluster::build_images(&tools, &out, true)? {
        let compressed = written
            .compressed
            .map(|c| format!(", {:.1} MiB compressed", c as f64 / 1048576.0))
            .unwrap_or_default();
        println!(
            "{}\t{}\t{:.1} MiB{compressed}\t{}",
            written.path.display(),
            written.reference,
            written.size as f64 / 1048576.0,
            written.digest
        );
    }
    Ok(())
}
