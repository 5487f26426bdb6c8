//! Policy as data: which tier (or bypass) a request gets, and whether a
//! response may be stored. `NotStorable` and `Bypass` reasons render through
//! `as_str()` into metric labels and the `Cache-Status` header.

use std::sync::Arc;

use http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fingerprint::QueryFacts;
use crate::route::CachedRoute;

/// A named TTL tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// Seconds an entry is served as fresh.
    pub fresh_secs: u64,
    /// Seconds after `fresh` during which the entry is served at once while it is
    /// refreshed in the background.
    pub stale_while_revalidate_secs: u64,
    /// Seconds after `fresh` during which the entry is served when Superset fails.
    pub stale_if_error_secs: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            name: "standard".into(),
            fresh_secs: 300,
            stale_while_revalidate_secs: 300,
            stale_if_error_secs: 3600,
        }
    }
}

impl TierConfig {
    /// The shipped tiers: realtime, standard, historical.
    pub fn defaults() -> Vec<TierConfig> {
        vec![
            TierConfig {
                name: "realtime".into(),
                fresh_secs: 30,
                stale_while_revalidate_secs: 30,
                stale_if_error_secs: 300,
            },
            TierConfig::default(),
            TierConfig {
                name: "historical".into(),
                fresh_secs: 86_400,
                stale_while_revalidate_secs: 3_600,
                stale_if_error_secs: 7 * 86_400,
            },
        ]
    }

    /// Milliseconds until the entry must leave every store.
    pub fn stale_ms(&self) -> u64 {
        self.stale_while_revalidate_secs
            .max(self.stale_if_error_secs)
            * 1000
    }
}

/// Time-range class of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeRangeClass {
    /// Moves with the clock (`Last week`, `today : now`, `No filter` over live data).
    Relative,
    /// Both ends fixed and in the past: results do not change.
    AbsolutePast,
    /// The query has no time range.
    None,
}

impl TimeRangeClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            TimeRangeClass::Relative => "relative",
            TimeRangeClass::AbsolutePast => "absolute_past",
            TimeRangeClass::None => "none",
        }
    }
}

/// What kind of identity a request carries, before Superset is asked who it is.
/// Rules match on it (`identity = ["guest"]`), e.g. to give embedded dashboards
/// their own tier or to serve anonymous viewers from a `public` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A Superset user: `Authorization: Bearer` and/or the session cookie.
    User,
    /// An embedded-dashboard guest token (the guest-token header).
    Guest,
    /// No credential at all.
    Anonymous,
}

impl IdentityKind {
    /// Classify a request's credential set. A guest token names the embedding
    /// context, so it decides the kind even when other credentials come along.
    pub fn of(creds: Option<&crate::identity::Credentials>) -> IdentityKind {
        match creds {
            None => IdentityKind::Anonymous,
            Some(c) if c.guest_token.is_some() => IdentityKind::Guest,
            Some(_) => IdentityKind::User,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Guest => "guest",
            IdentityKind::Anonymous => "anonymous",
        }
    }
}

/// Identity scope kind a rule may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// One entry per Superset user (default, always safe).
    #[default]
    User,
    /// One entry per set of role names (from `/api/v1/me/roles/`). Safe only
    /// when results depend on roles alone: Superset's RLS filters attach to
    /// roles, but Jinja macros such as `current_username()`,
    /// `current_user_id()` or `current_user_email()` in a dataset, a virtual
    /// dataset's SQL or a filter make results per user, and users with equal
    /// roles would then see each other's rows. See SECURITY.md.
    Roles,
    /// One shared entry for everyone: only for data that is the same for all
    /// viewers (no RLS, no per-user Jinja). Requests without credentials may then
    /// be served from cache too, so Superset's permission check is skipped for
    /// hits: anyone who can reach chartcache can read these entries.
    Public,
}

/// One rule. Every field given must match (lists match any of their values);
/// the first matching rule wins.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Name shown by explain and in logs.
    pub name: String,
    /// Datasources, `{id}__{type}` (e.g. `7__table`).
    pub datasource: Vec<String>,
    pub chart_id: Vec<u64>,
    pub dashboard_id: Vec<u64>,
    pub viz_type: Vec<String>,
    pub result_format: Vec<String>,
    pub result_type: Vec<String>,
    /// Route kinds: `chart_data`, `chart_data_get`, `explore_json`.
    pub route: Vec<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    pub time_range: Vec<TimeRangeClass>,
    /// Identity kinds of the request: `user`, `guest`, `anonymous`.
    pub identity: Vec<IdentityKind>,
    /// Tier to use; exactly one of `tier` and `bypass = true`.
    pub tier: Option<String>,
    /// Forward uncached.
    pub bypass: bool,
    /// Identity scope for matching requests (default `user`).
    pub scope: ScopeKind,
    /// Let Superset's `cache_timeout` cap `fresh` (default true).
    pub respect_superset_timeout: Option<bool>,
}

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
                    "chart_data" | "chart_data_get" | "explore_json"
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

/// Classify all time ranges of a query: any relative → relative; all absolute
/// and ended → absolute_past; none at all → none.
pub fn classify_time_ranges(ranges: &[String], now_ms: u64) -> TimeRangeClass {
    time_range_end(ranges).classify(now_ms)
}

/// What a query's time ranges say whatever the day: the part of
/// [`classify_time_ranges`] that needs parsing, done once per canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRangeEnd {
    /// No time range at all.
    None,
    /// At least one range is not two fixed dates.
    Relative,
    /// All ranges are fixed; the latest ends (exclusively) on this day since
    /// the Unix epoch.
    Until(i64),
}

/// Parse a query's time ranges into a [`TimeRangeEnd`].
pub fn time_range_end(ranges: &[String]) -> TimeRangeEnd {
    let mut last = None;
    for r in ranges {
        let Some((start, end)) = r.split_once(" : ") else {
            return TimeRangeEnd::Relative;
        };
        match (parse_day(start.trim()), parse_day(end.trim())) {
            (Some(_), Some(end_day)) => last = Some(last.map_or(end_day, |l: i64| l.max(end_day))),
            _ => return TimeRangeEnd::Relative,
        }
    }
    last.map_or(TimeRangeEnd::None, TimeRangeEnd::Until)
}

impl TimeRangeEnd {
    /// The class on the day of `now_ms`.
    pub fn classify(self, now_ms: u64) -> TimeRangeClass {
        let today = (now_ms / 86_400_000) as i64;
        match self {
            TimeRangeEnd::None => TimeRangeClass::None,
            // The end is exclusive in Superset; a range ending today still moves.
            TimeRangeEnd::Until(day) if day <= today => TimeRangeClass::AbsolutePast,
            TimeRangeEnd::Until(_) | TimeRangeEnd::Relative => TimeRangeClass::Relative,
        }
    }
}

/// Days since the Unix epoch for `YYYY-MM-DD` optionally followed by `THH:MM:SS`
/// or ` HH:MM:SS` (a time of day rounds the end up to the next day).
fn parse_day(s: &str) -> Option<i64> {
    let (date, time) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut it = date.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    match time {
        None => Some(days),
        Some(t)
            if t.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
                && !t.is_empty() =>
        {
            let midnight = t.trim_start_matches(['0', ':', '.']).is_empty();
            Some(if midnight { days } else { days + 1 })
        }
        Some(_) => None,
    }
}

/// Why a request is forwarded without consulting the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    NoCredential,
    IdentityDenied,
    IdentityError,
    Unkeyable(crate::fingerprint::Unkeyable),
    BodyTooLarge,
    Rule,
    /// Local verification refused the credential (forged, expired or invalid
    /// JWT or guest token); the reason is the `Cache-Status` detail.
    CredentialInvalid(&'static str),
    /// The credential headers can be read more than one way (duplicate or
    /// empty, named by `Connection`, non-ASCII cookies): what would key the
    /// entry might not be what Superset answers for.
    AmbiguousCredential,
}

impl Bypass {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bypass::NoCredential => "no-credential",
            Bypass::IdentityDenied => "identity-denied",
            Bypass::IdentityError => "identity-error",
            Bypass::Unkeyable(u) => u.as_str(),
            Bypass::BodyTooLarge => "body-too-large",
            Bypass::Rule => "rule",
            Bypass::CredentialInvalid(why) => why,
            Bypass::AmbiguousCredential => "ambiguous-credential",
        }
    }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Status,
    Async,
    NoStore,
    NotJson,
    Encoded,
    TooLarge,
    Bypass,
}

impl NotStorable {
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStorable::Status => "status",
            NotStorable::Async => "async-202",
            NotStorable::NoStore => "no-store",
            NotStorable::NotJson => "content-type",
            NotStorable::Encoded => "content-encoding",
            NotStorable::TooLarge => "too-large",
            NotStorable::Bypass => "bypass",
        }
    }
}

/// Cacheability of a response, decided from its head (size is checked on the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheability {
    Storable,
    NotStorable(NotStorable),
}

/// Decide from status and headers whether a response may be stored.
pub fn response_cacheability(
    status: u16,
    headers: &HeaderMap,
    store_exports: bool,
) -> Cacheability {
    use Cacheability::*;
    match status {
        200 => {}
        202 => return NotStorable(self::NotStorable::Async),
        _ => return NotStorable(self::NotStorable::Status),
    }
    for v in headers.get_all(header::CACHE_CONTROL) {
        let v = v.to_str().unwrap_or("no-store").to_ascii_lowercase();
        if v.split(',')
            .any(|d| matches!(d.trim(), "no-store" | "private"))
        {
            return NotStorable(self::NotStorable::NoStore);
        }
    }
    // We ask Superset for identity bodies; anything else we do not understand.
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return NotStorable(self::NotStorable::Encoded);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let ok = ct == "application/json"
        || (store_exports
            && (ct == "text/csv"
                || ct == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"));
    if ok {
        Storable
    } else {
        NotStorable(self::NotStorable::NotJson)
    }
}

/// The smallest `"cache_timeout": N` in a Superset chart-data body, found by a
/// byte scan (no JSON parse on the miss path).
pub fn superset_cache_timeout(body: &[u8]) -> Option<u64> {
    const NEEDLE: &[u8] = b"\"cache_timeout\":";
    let mut min: Option<u64> = None;
    let mut i = 0;
    while let Some(pos) = body[i..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let mut j = i + pos + NEEDLE.len();
        while j < body.len() && body[j] == b' ' {
            j += 1;
        }
        let start = j;
        while j < body.len() && body[j].is_ascii_digit() {
            j += 1;
        }
        if let Some(n) = std::str::from_utf8(&body[start..j])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            min = Some(min.map_or(n, |m: u64| m.min(n)));
        }
        i = j.max(i + pos + 1);
    }
    min
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    // 2026-11-25
    const NOW: u64 = 20_782 * DAY + 3_600_000;
    const U: IdentityKind = IdentityKind::User;

    #[test]
    fn time_range_classes() {
        let c = |v: &[&str]| {
            classify_time_ranges(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), NOW)
        };
        assert_eq!(c(&[]), TimeRangeClass::None);
        assert_eq!(c(&["No filter"]), TimeRangeClass::Relative);
        assert_eq!(c(&["Last week"]), TimeRangeClass::Relative);
        assert_eq!(c(&["today : now"]), TimeRangeClass::Relative);
        assert_eq!(
            c(&["2023-01-01 : 2024-01-01"]),
            TimeRangeClass::AbsolutePast
        );
        assert_eq!(
            c(&["2023-01-01T00:00:00 : 2024-01-01T00:00:00"]),
            TimeRangeClass::AbsolutePast
        );
        assert_eq!(c(&["2023-01-01 : 2026-12-31"]), TimeRangeClass::Relative);
        assert_eq!(
            c(&["2023-01-01 : 2024-01-01", "Last day"]),
            TimeRangeClass::Relative
        );
        assert_eq!(c(&["2023-13-01 : 2024-01-01"]), TimeRangeClass::Relative);
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-11-25"), Some(20_782));
        assert_eq!(parse_day("2026-11-25T10:00:00"), Some(20_783));
    }

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

    #[test]
    fn storability() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            response_cacheability(200, &h, false),
            Cacheability::Storable
        );
        assert_eq!(
            response_cacheability(202, &h, false),
            Cacheability::NotStorable(NotStorable::Async)
        );
        assert_eq!(
            response_cacheability(500, &h, false),
            Cacheability::NotStorable(NotStorable::Status)
        );
        assert_eq!(
            response_cacheability(404, &h, false),
            Cacheability::NotStorable(NotStorable::Status)
        );
        let mut p = h.clone();
        p.insert(header::CACHE_CONTROL, "private, max-age=0".parse().unwrap());
        assert_eq!(
            response_cacheability(200, &p, false),
            Cacheability::NotStorable(NotStorable::NoStore)
        );
        let mut csv = HeaderMap::new();
        csv.insert(
            header::CONTENT_TYPE,
            "text/csv; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            response_cacheability(200, &csv, false),
            Cacheability::NotStorable(NotStorable::NotJson)
        );
        assert_eq!(
            response_cacheability(200, &csv, true),
            Cacheability::Storable
        );
        let mut z = h.clone();
        z.insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
        assert_eq!(
            response_cacheability(200, &z, false),
            Cacheability::NotStorable(NotStorable::Encoded)
        );
    }

    #[test]
    fn finds_smallest_superset_cache_timeout() {
        assert_eq!(
            superset_cache_timeout(
                br#"{"result":[{"cache_timeout": 86400},{"cache_timeout":60}]}"#
            ),
            Some(60)
        );
        assert_eq!(
            superset_cache_timeout(br#"{"result":[{"cache_timeout":null}]}"#),
            None
        );
        assert_eq!(superset_cache_timeout(b""), None);
    }
}
