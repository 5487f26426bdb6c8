//! The Kubernetes manifests, Helm values and Grafana dashboard under `deploy/`
//! render and validate (schemas, hardening, probes, metric names that this
//! binary exports, one autoscaler per Deployment, alert rules and their unit
//! tests under promtool) — see `deploy/validate.sh`.

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

/// The KEDA variant renders: the component replaces the HPA with a
/// ScaledObject for the same Deployment (validate.sh checks the fields).
#[test]
fn keda_overlay_renders_a_scaled_object_instead_of_the_hpa() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy/overlays/ingress-backend-keda"])
        .current_dir(root)
        .output()
        .expect("kubectl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert!(kinds.contains(&"ScaledObject"), "{kinds:?}");
    assert!(kinds.contains(&"Deployment"), "{kinds:?}");
    assert!(!kinds.contains(&"HorizontalPodAutoscaler"), "{kinds:?}");
    assert!(text.contains("type: prometheus"), "{text}");
}
