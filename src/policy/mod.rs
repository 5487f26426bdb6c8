//! Policy as data: which tier (or bypass) a request gets, and whether a
//! response may be stored. `NotStorable` and `Bypass` reasons render through
//! `as_str()` into metric labels and the `Cache-Status` header.

use std::sync::Arc;

use crate::config::{Config, IdentityKind, RuleConfig, ScopeKind, TierConfig, TimeRangeClass};
use crate::fingerprint::QueryFacts;
use crate::route::CachedRoute;
use crate::time_range::{TimeRangeEnd, time_range_end};

mod storable;

pub use storable::{Cacheability, NotStorable, response_cacheability, superset_cache_timeout};

/// What policy decided for a request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Name of the matched rule, or `default` (shared: no allocation per request).
    pub rule: Arc<str>,
    /// `None` means bypass.
    pub tier: Option<Arc<TierConfig>>,
    pub scope: ScopeKind,
    pub respect_superset_timeout: bool,
    pub time_range: TimeRangeClass,
    pub identity: IdentityKind,
}

struct Rule {
    cfg: RuleConfig,
    name: Arc<str>,
    tier: Option<Arc<TierConfig>>,
}

/// Compiled tiers and rules.
pub struct Policy {
    rules: Vec<Rule>,
    default_rule: Arc<str>,
    default: Arc<TierConfig>,
    tiers: Vec<Arc<TierConfig>>,
}

impl Policy {
    /// Compile and check tiers and rules.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Policy> {
        let mut tiers: Vec<Arc<TierConfig>> = Vec::new();
        for t in &cfg.tiers {
            if t.name.is_empty() {
                anyhow::bail!("a tier has no name");
            }
            if tiers.iter().any(|x| x.name == t.name) {
                anyhow::bail!("tier {:?} is defined twice", t.name);
            }
            if t.fresh_secs == 0 {
                anyhow::bail!("tier {:?}: fresh_secs must be > 0", t.name);
            }
            tiers.push(Arc::new(t.clone()));
        }
        let find = |n: &str| tiers.iter().find(|t| t.name == n).cloned();
        let default = find(&cfg.default_tier)
            .ok_or_else(|| anyhow::anyhow!("default_tier {:?} is not a tier", cfg.default_tier))?;
        // The built-in rules are defaults, not the operator's words: one whose
        // tier a config's own `tiers` leave out is skipped, not an error.
        let builtin = cfg.rules == crate::config::default_rules();
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let label = if r.name.is_empty() {
                format!("rule #{}", i + 1)
            } else {
                r.name.clone()
            };
            if builtin && r.tier.as_deref().is_some_and(|t| find(t).is_none()) {
                tracing::debug!(rule = %label, "built-in rule skipped: its tier is not configured");
                continue;
            }
            let tier = match (&r.tier, r.bypass) {
                (Some(_), true) => {
                    anyhow::bail!("{label}: give either `tier` or `bypass = true`, not both")
                }
                (None, false) => anyhow::bail!("{label}: needs `tier` or `bypass = true`"),
                (Some(t), false) => {
                    Some(find(t).ok_or_else(|| anyhow::anyhow!("{label}: unknown tier {t:?}"))?)
                }
                (None, true) => None,
            };
            for rt in &r.route {
                if !matches!(
                    rt.as_str(),
                    "chart_data" | "chart_data_get" | "explore_json" | "chart_data_result"
                ) {
                    anyhow::bail!("{label}: unknown route {rt:?}");
                }
            }
            if r.identity.contains(&IdentityKind::Anonymous)
                && r.scope != ScopeKind::Public
                && tier.is_some()
            {
                // Requests without a credential cannot be keyed per user.
                anyhow::bail!("{label}: identity \"anonymous\" needs scope = \"public\" or bypass");
            }
            let mut cfg = r.clone();
            cfg.name = label;
            let name = Arc::from(cfg.name.as_str());
            rules.push(Rule { cfg, name, tier });
        }
        Ok(Policy {
            rules,
            default_rule: Arc::from("default"),
            default,
            tiers,
        })
    }

    /// A tier by name.
    pub fn tier(&self, name: &str) -> Option<Arc<TierConfig>> {
        self.tiers.iter().find(|t| t.name == name).cloned()
    }

    /// First matching rule, else the default tier with `user` scope.
    pub fn decide(
        &self,
        route: CachedRoute,
        path: &str,
        facts: &QueryFacts,
        identity: IdentityKind,
        now_ms: u64,
    ) -> Decision {
        let end = time_range_end(&facts.time_ranges);
        self.decide_with(route, path, facts, end, identity, now_ms)
    }

    /// [`Policy::decide`] with the facts' [`time_range_end`] already known: the
    /// hit path keeps it with the memoized canonical form, so a hit does not
    /// parse the time ranges again.
    pub fn decide_with(
        &self,
        route: CachedRoute,
        path: &str,
        facts: &QueryFacts,
        end: TimeRangeEnd,
        identity: IdentityKind,
        now_ms: u64,
    ) -> Decision {
        let time_range = end.classify(now_ms);
        for r in &self.rules {
            if rule_matches(&r.cfg, route, path, facts, time_range)
                && any_or(&r.cfg.identity, Some(&identity))
            {
                return Decision {
                    rule: r.name.clone(),
                    tier: r.tier.clone(),
                    scope: r.cfg.scope,
                    respect_superset_timeout: r.cfg.respect_superset_timeout.unwrap_or(true),
                    time_range,
                    identity,
                };
            }
        }
        Decision {
            rule: self.default_rule.clone(),
            tier: Some(self.default.clone()),
            scope: ScopeKind::User,
            respect_superset_timeout: true,
            time_range,
            identity,
        }
    }
}

fn any_or<T: PartialEq>(list: &[T], v: Option<&T>) -> bool {
    list.is_empty() || v.is_some_and(|v| list.contains(v))
}

fn any_str(list: &[String], v: Option<&str>) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
}

fn rule_matches(
    r: &RuleConfig,
    route: CachedRoute,
    path: &str,
    f: &QueryFacts,
    tr: TimeRangeClass,
) -> bool {
    any_str(&r.datasource, f.datasource.as_deref())
        && any_or(&r.chart_id, f.chart_id.as_ref())
        && any_or(&r.dashboard_id, f.dashboard_id.as_ref())
        && any_str(&r.viz_type, f.viz_type.as_deref())
        && any_str(
            &r.result_format,
            Some(f.result_format.as_deref().unwrap_or("json")),
        )
        && any_str(
            &r.result_type,
            Some(f.result_type.as_deref().unwrap_or("full")),
        )
        && any_str(&r.route, Some(route.as_str()))
        && r.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        && any_or(&r.time_range, Some(&tr))
}

/// Why a request is forwarded without consulting the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    NoCredential,
    /// Superset or local verification refused the credential.
    Denied(crate::identity::Denial),
    IdentityError,
    Unkeyable(crate::fingerprint::Unkeyable),
    BodyTooLarge,
    Rule,
    /// The credential headers can be read more than one way (duplicate or
    /// empty, named by `Connection`, non-ASCII cookies): what would key the
    /// entry might not be what Superset answers for.
    AmbiguousCredential,
}

impl Bypass {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bypass::NoCredential => "no-credential",
            Bypass::Denied(d) => d.as_str(),
            Bypass::IdentityError => "identity-error",
            Bypass::Unkeyable(u) => u.as_str(),
            Bypass::BodyTooLarge => "body-too-large",
            Bypass::Rule => "rule",
            Bypass::AmbiguousCredential => "ambiguous-credential",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time_range::*;

    const DAY: u64 = 86_400_000;
    // 2026-11-25
    const NOW: u64 = 20_782 * DAY + 3_600_000;
    const U: IdentityKind = IdentityKind::User;

    /// The parsed summary is independent of the day; only its classification
    /// moves: a range ending today is relative, from the next day on it is past.
    #[test]
    fn time_range_end_is_parsed_once_and_classified_per_day() {
        let end = |v: &[&str]| time_range_end(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(end(&[]), TimeRangeEnd::None);
        assert_eq!(end(&["Last week"]), TimeRangeEnd::Relative);
        assert_eq!(
            end(&["2026-01-01 : 2026-11-25", "2023-01-01 : 2024-01-01"]),
            TimeRangeEnd::Until(20_782)
        );
        assert_eq!(
            end(&["2023-01-01 : 2024-01-01", "today : now"]),
            TimeRangeEnd::Relative
        );
        let e = end(&["2026-01-01 : 2026-11-26", "2023-01-01 : 2024-01-01"]);
        assert_eq!(e.classify(NOW), TimeRangeClass::Relative);
        assert_eq!(e.classify(NOW + DAY), TimeRangeClass::AbsolutePast);
        assert_eq!(TimeRangeEnd::None.classify(NOW), TimeRangeClass::None);
        // decide_with with the summary decides as decide does.
        let p = policy(vec![RuleConfig {
            name: "hist".into(),
            time_range: vec![TimeRangeClass::AbsolutePast],
            tier: Some("historical".into()),
            ..RuleConfig::default()
        }]);
        let f = QueryFacts {
            time_ranges: vec!["2026-01-01 : 2026-11-26".into()],
            ..QueryFacts::default()
        };
        let route = CachedRoute::ChartData;
        let path = "/api/v1/chart/data";
        for now in [NOW, NOW + DAY] {
            let a = p.decide(route, path, &f, U, now);
            let b = p.decide_with(route, path, &f, time_range_end(&f.time_ranges), U, now);
            assert_eq!((a.rule.clone(), a.time_range), (b.rule, b.time_range));
        }
        assert_eq!(&*p.decide(route, path, &f, U, NOW + DAY).rule, "hist");
    }

    fn policy(rules: Vec<RuleConfig>) -> Policy {
        let cfg = Config {
            rules,
            upstream: "http://x".into(),
            ..Config::default()
        };
        Policy::from_config(&cfg).unwrap()
    }

    #[test]
    fn first_matching_rule_wins_else_default() {
        let p = policy(vec![
            RuleConfig {
                name: "hist".into(),
                time_range: vec![TimeRangeClass::AbsolutePast],
                tier: Some("historical".into()),
                ..Default::default()
            },
            RuleConfig {
                name: "no-csv".into(),
                result_format: vec!["csv".into()],
                bypass: true,
                ..Default::default()
            },
            RuleConfig {
                name: "pie".into(),
                viz_type: vec!["pie".into()],
                tier: Some("realtime".into()),
                ..Default::default()
            },
        ]);
        let mut f = QueryFacts {
            viz_type: Some("pie".into()),
            time_ranges: vec!["2023-01-01 : 2024-01-01".into()],
            ..Default::default()
        };
        let d = p.decide(CachedRoute::ChartData, "/api/v1/chart/data", &f, U, NOW);
        assert_eq!(
            (&*d.rule, d.tier.unwrap().name.as_str()),
            ("hist", "historical")
        );
        f.time_ranges = vec!["Last week".into()];
        let d = p.decide(CachedRoute::ChartData, "/api/v1/chart/data", &f, U, NOW);
        assert_eq!(
            (&*d.rule, d.tier.unwrap().name.as_str()),
            ("pie", "realtime")
        );
        f.result_format = Some("csv".into());
        let d = p.decide(CachedRoute::ChartData, "/api/v1/chart/data", &f, U, NOW);
        assert!(d.tier.is_none());
        let d = p.decide(CachedRoute::ChartData, "/p", &QueryFacts::default(), U, NOW);
        assert_eq!(
            (&*d.rule, d.tier.unwrap().name.as_str()),
            ("default", "standard")
        );
    }

    #[test]
    fn identity_kind_matcher() {
        let p = policy(vec![
            RuleConfig {
                name: "embedded".into(),
                identity: vec![IdentityKind::Guest],
                tier: Some("realtime".into()),
                ..Default::default()
            },
            RuleConfig {
                name: "anon".into(),
                identity: vec![IdentityKind::Anonymous],
                tier: Some("historical".into()),
                scope: ScopeKind::Public,
                ..Default::default()
            },
        ]);
        let f = QueryFacts::default();
        let d = |k| p.decide(CachedRoute::ChartData, "/api/v1/chart/data", &f, k, NOW);
        assert_eq!(&*d(IdentityKind::Guest).rule, "embedded");
        let a = d(IdentityKind::Anonymous);
        assert_eq!((&*a.rule, a.scope), ("anon", ScopeKind::Public));
        assert_eq!(&*d(IdentityKind::User).rule, "default");

        use crate::identity::Credentials;
        assert_eq!(IdentityKind::of(None), IdentityKind::Anonymous);
        let mut c = Credentials {
            authorization: Some(http::HeaderValue::from_static("Bearer x")),
            ..Default::default()
        };
        assert_eq!(IdentityKind::of(Some(&c)), IdentityKind::User);
        c.guest_token = Some(http::HeaderValue::from_static("g"));
        assert_eq!(IdentityKind::of(Some(&c)), IdentityKind::Guest);
    }

    #[test]
    fn rules_load_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
upstream = "http://x"
[[rules]]
name = "anon-kpis"
identity = ["anonymous", "user"]
datasource = ["9__table"]
time_range = ["relative", "none"]
scope = "public"
tier = "realtime"
respect_superset_timeout = false
"#,
        )
        .unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        let p = Policy::from_config(&cfg).unwrap();
        let f = QueryFacts {
            datasource: Some("9__table".into()),
            ..Default::default()
        };
        let d = p.decide(
            CachedRoute::ChartData,
            "/api/v1/chart/data",
            &f,
            IdentityKind::Anonymous,
            NOW,
        );
        assert_eq!(&*d.rule, "anon-kpis");
        assert_eq!(d.scope, ScopeKind::Public);
        assert!(!d.respect_superset_timeout);
        assert_eq!(d.tier.unwrap().name, "realtime");
        let d = p.decide(
            CachedRoute::ChartData,
            "/api/v1/chart/data",
            &f,
            IdentityKind::Guest,
            NOW,
        );
        assert_eq!(&*d.rule, "default");
    }

    #[test]
    fn built_in_rules_need_no_tier_of_theirs_but_written_ones_do() {
        let standard_only = vec![TierConfig {
            name: "standard".into(),
            fresh_secs: 60,
            ..TierConfig::default()
        }];
        // Built-in rules with tiers of one's own: the `historical` rule is left out.
        let p = Policy::from_config(&Config {
            tiers: standard_only.clone(),
            upstream: "http://x".into(),
            ..Config::default()
        })
        .unwrap();
        assert_eq!(p.rules.len(), 1);
        // The same rule written in a config still names an unknown tier.
        let mut written = crate::config::default_rules();
        written.pop();
        assert!(
            Policy::from_config(&Config {
                tiers: standard_only,
                rules: written,
                upstream: "http://x".into(),
                ..Config::default()
            })
            .is_err()
        );
    }

    #[test]
    fn bad_rules_are_rejected() {
        let mk = |r: RuleConfig| {
            Policy::from_config(&Config {
                rules: vec![r],
                upstream: "http://x".into(),
                ..Config::default()
            })
        };
        assert!(mk(RuleConfig::default()).is_err());
        assert!(
            mk(RuleConfig {
                tier: Some("nope".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            mk(RuleConfig {
                tier: Some("standard".into()),
                bypass: true,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            mk(RuleConfig {
                tier: Some("standard".into()),
                route: vec!["x".into()],
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            mk(RuleConfig {
                tier: Some("standard".into()),
                identity: vec![IdentityKind::Anonymous],
                ..Default::default()
            })
            .is_err()
        );
    }
}
