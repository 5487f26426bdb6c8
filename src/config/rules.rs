//! Tiers and rules as configuration data (`[[tiers]]`, `[[rules]]`): what a
//! config file says. [`crate::policy::Policy`] compiles them.

use serde::{Deserialize, Serialize};

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
    /// Route kinds: `chart_data`, `chart_data_get`, `explore_json`,
    /// `chart_data_result` (an async query's `result_url`).
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
