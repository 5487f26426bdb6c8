//! Route classification: which requests are cache candidates, which change a
//! Superset object (and so invalidate), and which are passed through untouched.

use http::Method;

use crate::config::RoutesConfig;

/// A cacheable chart-data route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachedRoute {
    /// `POST /api/v1/chart/data`
    ChartData,
    /// `GET /api/v1/chart/{id}/data/`
    ChartDataGet { chart_id: u64 },
    /// `GET|POST /superset/explore_json/`
    ExploreJson,
}

impl CachedRoute {
    /// Stable name: part of the cache key and of metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            CachedRoute::ChartData => "chart_data",
            CachedRoute::ChartDataGet { .. } => "chart_data_get",
            CachedRoute::ExploreJson => "explore_json",
        }
    }
}

/// The kind of Superset object a write touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Chart,
    Dataset,
    Database,
    Dashboard,
}

impl ObjectKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectKind::Chart => "chart",
            ObjectKind::Dataset => "dataset",
            ObjectKind::Database => "database",
            ObjectKind::Dashboard => "dashboard",
        }
    }
}

/// A request that changes a Superset object; on success its cached results are purged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    pub kind: ObjectKind,
    /// Object ids; empty for a bulk delete whose ids are in the query string (`?q=!(1,2)`).
    pub ids: Vec<u64>,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Cached(CachedRoute),
    Write(WriteTarget),
    Pass,
}

impl Route {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Cached(c) => c.as_str(),
            Route::Write(_) => "write",
            Route::Pass => "pass",
        }
    }
}

/// Classify a request by method and path (and, for bulk deletes, the query).
pub fn classify(method: &Method, path: &str, query: Option<&str>, cfg: &RoutesConfig) -> Route {
    // The path of nearly every cached request, matched without splitting it.
    if cfg.chart_data
        && method == Method::POST
        && matches!(path, "/api/v1/chart/data" | "/api/v1/chart/data/")
    {
        return Route::Cached(CachedRoute::ChartData);
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let mut seg = trimmed.split('/').skip(1);
    let parts: [Option<&str>; 6] = [
        seg.next(),
        seg.next(),
        seg.next(),
        seg.next(),
        seg.next(),
        seg.next(),
    ];
    match parts {
        [
            Some("api"),
            Some("v1"),
            Some("chart"),
            Some("data"),
            None,
            None,
        ] if cfg.chart_data && method == Method::POST => Route::Cached(CachedRoute::ChartData),
        [
            Some("api"),
            Some("v1"),
            Some("chart"),
            Some(id),
            Some("data"),
            None,
        ] if cfg.chart_data_get && method == Method::GET => match parse_id(id) {
            Some(chart_id) => Route::Cached(CachedRoute::ChartDataGet { chart_id }),
            None => Route::Pass,
        },
        [
            Some("superset"),
            Some("explore_json"),
            None,
            None,
            None,
            None,
        ] if cfg.explore_json && (method == Method::GET || method == Method::POST) => {
            Route::Cached(CachedRoute::ExploreJson)
        }
        [Some("api"), Some("v1"), Some(obj), rest, tail, None] => {
            let kind = match obj {
                "chart" => ObjectKind::Chart,
                "dataset" => ObjectKind::Dataset,
                "database" => ObjectKind::Database,
                "dashboard" => ObjectKind::Dashboard,
                _ => return Route::Pass,
            };
            write_target(method, kind, rest, tail, query)
                .map(Route::Write)
                .unwrap_or(Route::Pass)
        }
        _ => Route::Pass,
    }
}

fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn write_target(
    method: &Method,
    kind: ObjectKind,
    id: Option<&str>,
    tail: Option<&str>,
    query: Option<&str>,
) -> Option<WriteTarget> {
    match (id, tail) {
        // PUT|DELETE /api/v1/{kind}/{id}
        (Some(id), None) if method == Method::PUT || method == Method::DELETE => {
            Some(WriteTarget {
                kind,
                ids: vec![parse_id(id)?],
            })
        }
        // PUT /api/v1/dataset/{id}/refresh
        (Some(id), Some("refresh")) if method == Method::PUT && kind == ObjectKind::Dataset => {
            Some(WriteTarget {
                kind,
                ids: vec![parse_id(id)?],
            })
        }
        // DELETE /api/v1/{kind}/?q=!(1,2,3)  (bulk delete, rison list)
        (None, None) if method == Method::DELETE => Some(WriteTarget {
            kind,
            ids: bulk_ids(query.unwrap_or("")),
        }),
        _ => None,
    }
}

/// Ids of a bulk delete: `q=!(1,2,3)` (rison, possibly percent-encoded).
fn bulk_ids(query: &str) -> Vec<u64> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "q")
        .flat_map(|(_, v)| {
            v.trim_start_matches('!')
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .filter_map(|s| parse_id(s.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, p: &str) -> Route {
        classify(&m, p, None, &RoutesConfig::default())
    }

    #[test]
    fn cached_routes() {
        assert_eq!(
            c(Method::POST, "/api/v1/chart/data"),
            Route::Cached(CachedRoute::ChartData)
        );
        assert_eq!(
            c(Method::POST, "/api/v1/chart/data/"),
            Route::Cached(CachedRoute::ChartData)
        );
        assert_eq!(c(Method::GET, "/api/v1/chart/data"), Route::Pass);
        assert_eq!(
            c(Method::GET, "/api/v1/chart/2/data/"),
            Route::Cached(CachedRoute::ChartDataGet { chart_id: 2 })
        );
        assert_eq!(c(Method::GET, "/api/v1/chart/x/data/"), Route::Pass);
        assert_eq!(
            c(Method::GET, "/superset/explore_json/"),
            Route::Cached(CachedRoute::ExploreJson)
        );
        assert_eq!(
            c(Method::POST, "/superset/explore_json/"),
            Route::Cached(CachedRoute::ExploreJson)
        );
        assert_eq!(c(Method::GET, "/superset/dashboard/sales/"), Route::Pass);
        assert_eq!(c(Method::GET, "/"), Route::Pass);
        assert_eq!(c(Method::GET, ""), Route::Pass);
    }

    #[test]
    fn routes_can_be_disabled() {
        let cfg = RoutesConfig {
            chart_data: false,
            ..RoutesConfig::default()
        };
        assert_eq!(
            classify(&Method::POST, "/api/v1/chart/data", None, &cfg),
            Route::Pass
        );
    }

    #[test]
    fn writes() {
        assert_eq!(
            c(Method::PUT, "/api/v1/dataset/1"),
            Route::Write(WriteTarget {
                kind: ObjectKind::Dataset,
                ids: vec![1]
            })
        );
        assert_eq!(
            c(Method::PUT, "/api/v1/dataset/7/refresh"),
            Route::Write(WriteTarget {
                kind: ObjectKind::Dataset,
                ids: vec![7]
            })
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/chart/42"),
            Route::Write(WriteTarget {
                kind: ObjectKind::Chart,
                ids: vec![42]
            })
        );
        assert_eq!(
            classify(
                &Method::DELETE,
                "/api/v1/dashboard/",
                Some("q=!(1,2)"),
                &RoutesConfig::default()
            ),
            Route::Write(WriteTarget {
                kind: ObjectKind::Dashboard,
                ids: vec![1, 2]
            })
        );
        assert_eq!(c(Method::GET, "/api/v1/dataset/1"), Route::Pass);
        assert_eq!(c(Method::PUT, "/api/v1/user/1"), Route::Pass);
        assert_eq!(
            c(Method::PUT, "/api/v1/chart/99999999999999999999999"),
            Route::Pass
        );
    }
}
