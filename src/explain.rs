//! `chartcache explain` and the admin `/explain` endpoint: show how a request
//! is canonicalized, keyed, tagged and tiered, without sending it anywhere.

use http::Method;
use serde_json::{Value, json};

use crate::config::Config;
use crate::config::{IdentityKind, ScopeKind};
use crate::fingerprint;
use crate::policy::{Decision, Policy};
use crate::route::{self, Route};

/// Explain a request. `scope` is the identity scope to key with (e.g. `user:2`);
/// the real one comes from Superset at request time. `identity` is the kind of
/// credential the request would carry (rules can match on it).
#[allow(clippy::too_many_arguments)]
pub fn explain(
    cfg: &Config,
    policy: &Policy,
    method: &Method,
    path_and_query: &str,
    content_type: Option<&str>,
    body: &[u8],
    scope: &str,
    identity: IdentityKind,
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
    let d = policy.decide(r, path, &canon.facts, identity, now_ms);
    let scope = match d.scope {
        ScopeKind::Public => "public".to_string(),
        // The caller names the scope (`user:2`, `roles:["Gamma"]`, `guest-grant:…`).
        ScopeKind::User | ScopeKind::Roles => scope.to_string(),
    };
    let key = fingerprint::build_key(r, path, &canon.query, &scope, &canon.body_digest);
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
        "identity": d.identity.as_str(),
        "scope_kind": match d.scope {
            ScopeKind::Public => "public",
            ScopeKind::User => "user",
            ScopeKind::Roles => "roles",
        },
        "rule": &*d.rule,
        "tier": d.tier.as_ref().map(|t| json!({
            "name": t.name,
            "fresh_secs": t.fresh_secs,
            "stale_while_revalidate_secs": t.stale_while_revalidate_secs,
            "stale_if_error_secs": t.stale_if_error_secs,
        })),
        "respect_superset_timeout": d.respect_superset_timeout,
        "ttl": ttl(&d, canon.facts.custom_cache_timeout),
        "refresh_ahead": (d.tier.is_some() && cfg.refresh_ahead.hot_hits > 0).then(|| json!({
            "hot_hits": cfg.refresh_ahead.hot_hits,
            "lead_secs": cfg.refresh_ahead.lead_secs,
        })),
        "bypass": d.tier.is_none().then_some("rule"),
    })
}

/// The TTLs an entry stored for this request gets, in seconds from storing.
/// Superset's per-query `cache_timeout` is only known from the response, so it
/// is reported as a cap that may lower `fresh_secs` further.
fn ttl(d: &Decision, custom_cache_timeout: Option<u64>) -> Value {
    let Some(t) = &d.tier else {
        return Value::Null;
    };
    let mut fresh = t.fresh_secs;
    let mut capped_by = Value::Null;
    let custom = custom_cache_timeout.filter(|c| d.respect_superset_timeout && *c < fresh);
    if let Some(c) = custom {
        fresh = c;
        capped_by = json!("custom_cache_timeout");
    }
    json!({
        "fresh_secs": fresh,
        "fresh_capped_by": capped_by,
        "superset_cache_timeout": if d.respect_superset_timeout {
            "caps fresh_secs when the response carries a smaller cache_timeout"
        } else {
            "ignored (rule sets respect_superset_timeout = false)"
        },
        "stale_while_revalidate_until_secs": fresh + t.stale_while_revalidate_secs,
        "stale_if_error_until_secs": fresh + t.stale_if_error_secs,
        "evicted_after_secs": fresh + t.stale_ms() / 1000,
        "stored": fresh > 0,
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
            IdentityKind::User,
            0,
        );
        assert_eq!(v["route"], "chart_data");
        assert_eq!(v["tier"]["name"], "standard");
        assert_eq!(v["rule"], "default");
        assert_eq!(v["ttl"]["fresh_secs"], 300);
        assert_eq!(v["ttl"]["stale_while_revalidate_until_secs"], 600);
        assert_eq!(v["ttl"]["stale_if_error_until_secs"], 3900);
        assert_eq!(v["ttl"]["evicted_after_secs"], 3900);
        assert_eq!(v["refresh_ahead"]["hot_hits"], 10);
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
            IdentityKind::User,
            0,
        );
        assert_eq!(v["route"], "pass");
    }

    #[test]
    fn shows_rule_tier_and_capped_ttls() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chartcache.toml");
        let mut cfg = Config::load(Some(&path)).unwrap();
        cfg.upstream = "http://x".into();
        let p = Policy::from_config(&cfg).unwrap();
        let mut body =
            crate::testutil::fixture("16-chart-data-bignumber-admin-miss.json")["request"]["body"]
                .clone();
        body["form_data"]["time_range"] = json!("2023-01-01 : 2024-01-01");
        body["queries"][0]["filters"][0]["val"] = json!("2023-01-01 : 2024-01-01");
        body["custom_cache_timeout"] = json!(600);
        let bytes = serde_json::to_vec(&body).unwrap();
        let v = explain(
            &cfg,
            &p,
            &Method::POST,
            "/api/v1/chart/data",
            Some("application/json"),
            &bytes,
            "user:1",
            IdentityKind::User,
            1_764_000_000_000,
        );
        assert_eq!(v["time_range_class"], "absolute_past", "{v:#}");
        assert_eq!(v["rule"], "closed-time-ranges");
        assert_eq!(v["tier"]["name"], "historical");
        assert_eq!(v["ttl"]["fresh_secs"], 600);
        assert_eq!(v["ttl"]["fresh_capped_by"], "custom_cache_timeout");
        assert_eq!(v["identity"], "user");
    }
}
