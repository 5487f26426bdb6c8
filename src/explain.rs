//! `chartcache explain` and the admin `/explain` endpoint: show how a request
//! is canonicalized, keyed, tagged and tiered, without sending it anywhere.

use http::Method;
use serde_json::{Value, json};

use crate::config::Config;
use crate::fingerprint;
use crate::policy::Policy;
use crate::route::{self, Route};

/// Explain a request. `scope` is the identity scope to key with (e.g. `user:2`);
/// the real one comes from Superset at request time.
pub fn explain(
    cfg: &Config,
    policy: &Policy,
    method: &Method,
    path_and_query: &str,
    content_type: Option<&str>,
    body: &[u8],
    scope: &str,
    now_ms: u64,
) -> Value {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let r = match route::classify(method, path, query, &cfg.routes) {
        Route::Cached(r) => r,
        Route::Write(w) => {
            return json!({"route": "write", "cached": false, "invalidates": format!("{:?}", crate::invalidate::purge_for(&w))});
        }
        Route::Pass => return json!({"route": "pass", "cached": false}),
    };
    let canon = match fingerprint::canonicalize(r, path, query, content_type, body) {
        Ok(c) => c,
        Err(u) => return json!({"route": r.as_str(), "cached": false, "bypass": u.as_str()}),
    };
    let d = policy.decide(r, path, &canon.facts, now_ms);
    let scope = match d.scope {
        crate::policy::ScopeKind::Public => "public".to_string(),
        // The caller names the scope (`user:2`, `roles:["Gamma"]`, `guest-grant:…`).
        crate::policy::ScopeKind::User | crate::policy::ScopeKind::Roles => scope.to_string(),
    };
    let key = fingerprint::build_key(r, path, &canon.query, &scope, &canon.body);
    json!({
        "route": r.as_str(),
        "cached": d.tier.is_some(),
        "key_schema_version": fingerprint::KEY_SCHEMA_VERSION,
        "key": key.to_hex(),
        "scope": scope,
        "force": canon.force,
        "canonical_body": String::from_utf8_lossy(&canon.body),
        "canonical_query": canon.query,
        "tags": canon.facts.tags(),
        "facts": canon.facts,
        "time_range_class": d.time_range.as_str(),
        "rule": d.rule,
        "tier": d.tier.as_ref().map(|t| json!({
            "name": t.name,
            "fresh_secs": t.fresh_secs,
            "stale_while_revalidate_secs": t.stale_while_revalidate_secs,
            "stale_if_error_secs": t.stale_if_error_secs,
        })),
        "respect_superset_timeout": d.respect_superset_timeout,
        "bypass": d.tier.is_none().then_some("rule"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_a_fixture() {
        let cfg = Config {
            upstream: "http://x".into(),
            ..Config::default()
        };
        let p = Policy::from_config(&cfg).unwrap();
        let f = crate::testutil::fixture("16-chart-data-bignumber-admin-miss.json");
        let body = serde_json::to_vec(&f["request"]["body"]).unwrap();
        let v = explain(
            &cfg,
            &p,
            &Method::POST,
            "/api/v1/chart/data",
            Some("application/json"),
            &body,
            "user:1",
            0,
        );
        assert_eq!(v["route"], "chart_data");
        assert_eq!(v["tier"]["name"], "standard");
        assert_eq!(v["tags"][0], "chart:1");
        assert_eq!(v["key"].as_str().unwrap().len(), 64);
        let v = explain(
            &cfg,
            &p,
            &Method::GET,
            "/api/v1/dashboard/1",
            None,
            b"",
            "user:1",
            0,
        );
        assert_eq!(v["route"], "pass");
    }
}
