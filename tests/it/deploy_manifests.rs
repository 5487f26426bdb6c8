//! The Kubernetes manifests, Helm values and Grafana dashboard under `deploy/`
//! render and validate (schemas, hardening, probes, metric names that this
//! binary exports) — see `deploy/validate.sh`.

use std::process::Command;

#[test]
fn deploy_manifests_render_and_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/deploy/validate.sh"))
        .env("CHARTCACHE_BIN", env!("CARGO_BIN_EXE_chartcache"))
        .current_dir(root)
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/validate.sh failed:\n{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}
