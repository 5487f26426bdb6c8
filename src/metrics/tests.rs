//! Unit tests of the metrics: names, labels, series at zero.

use super::*;

fn text(m: &Metrics) -> String {
    String::from_utf8(m.render()).unwrap()
}

#[test]
fn renders_all_names() {
    let m = Metrics::new();
    m.requests
        .with_label_values(&["chart_data", "hit", "200"])
        .inc();
    let text = text(&m);
    assert!(text.contains(
        "chartcache_requests_total{outcome=\"hit\",route=\"chart_data\",status=\"200\"} 1"
    ));
}

#[test]
fn build_info_carries_version_and_key_schema() {
    let t = text(&Metrics::new());
    let want = format!(
        "chartcache_build_info{{key_schema=\"{}\",version=\"{}\"}} 1",
        crate::fingerprint::KEY_SCHEMA_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    assert!(t.contains(&want), "{t}");
}

#[test]
fn known_labelled_series_exist_at_zero_from_startup() {
    let m = Metrics::new();
    m.prime_store("redis", known::REDIS_OPS);
    let t = text(&m);
    for series in [
        "chartcache_store_breaker_open{store=\"redis\"} 0",
        "chartcache_store_errors_total{op=\"get\",store=\"redis\"} 0",
        "chartcache_upstream_errors_total{error=\"timeout\",kind=\"chart\"} 0",
        "chartcache_coalesced_total{where=\"distributed\"} 0",
        "chartcache_not_stored_total{reason=\"too-large\"} 0",
        "chartcache_refused_total{reason=\"body_budget\"} 0",
        "chartcache_connection_deadlines_total{phase=\"http2_keepalive\"} 0",
        "chartcache_background_refreshes_total{kind=\"swr\",result=\"stored\"} 0",
        "chartcache_memory_store_evictions_total{cause=\"size\"} 0",
        "chartcache_config_reloads_total{result=\"failure\"} 0",
    ] {
        assert!(t.contains(series), "missing {series}");
    }
}

/// Every name constant is registered, and every family is either a
/// labelled one present from startup or an unlabelled one.
#[test]
fn every_constant_is_registered() {
    let m = Metrics::new();
    m.tls_cert_expiry.with_label_values(&["proxy"]).set(1);
    m.worker_connections.with_label_values(&["0"]).set(0);
    m.redis_connections.with_label_values(&["shared"]).set(0);
    m.memory_cache_bytes.with_label_values(&["memo"]).set(0);
    m.identity_lookups.with_label_values(&["principal"]);
    m.invalidation_messages.with_label_values(&["applied"]);
    m.upstream_requests.with_label_values(&["chart", "200"]);
    m.upstream_duration.with_label_values(&["chart"]);
    m.store_ops.with_label_values(&["redis", "get", "hit"]);
    m.store_duration.with_label_values(&["redis", "get"]);
    m.prime_store("redis", known::REDIS_OPS);
    m.redis_cluster_node_up.with_label_values(&["h:1"]);
    m.redis_cluster_node_errors.with_label_values(&["h:1"]);
    m.redis_subscription_losses.with_label_values(&["closed"]);
    let names: Vec<String> = m
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let src = include_str!("../metrics.rs");
    let consts = src.split("/// All metrics of one process.").next().unwrap();
    let declared: Vec<&str> = consts
        .split("\"chartcache_")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(declared.len() >= 35, "{declared:?}");
    for d in declared {
        let name = format!("chartcache_{d}");
        assert!(names.contains(&name), "{name} is not registered");
    }
}

#[test]
fn upstream_requests_carry_the_full_status_code() {
    let m = Metrics::new();
    let status = http::StatusCode::BAD_GATEWAY;
    m.upstream_requests
        .with_label_values(&["chart", status.as_str()])
        .inc();
    assert!(
        text(&m).contains("chartcache_upstream_requests_total{kind=\"chart\",status=\"502\"} 1")
    );
}

#[test]
fn config_reloads_count_and_stamp_success_only() {
    let m = Metrics::new();
    m.config_last_reload_success.set(0);
    m.config_reloaded(false);
    assert_eq!(m.config_last_reload_success.get(), 0);
    m.config_reloaded(true);
    assert!(m.config_last_reload_success.get() > 1_700_000_000);
    let n = |r: &str| m.config_reloads.with_label_values(&[r]).get();
    assert_eq!((n("success"), n("failure")), (1, 1));
}

#[test]
fn buckets_reach_the_upstream_timeout() {
    let default_timeout_secs =
        crate::config::UpstreamConfig::default().response_timeout_ms as f64 / 1000.0;
    assert!(buckets().last().copied().unwrap() >= default_timeout_secs);
    assert!(buckets().windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn catch_up_only_moves_forward() {
    let m = Metrics::new();
    let c = m.memory_evictions.with_label_values(&["size"]);
    Metrics::catch_up(&c, 5);
    Metrics::catch_up(&c, 3);
    Metrics::catch_up(&c, 7);
    assert_eq!(c.get(), 7);
}
