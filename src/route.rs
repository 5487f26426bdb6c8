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
    /// `GET /api/v1/chart/data/qc-...`: an async query's `result_url`. The
    /// URL is the same for every user; the data is not (keyed by scope).
    ResultUrl,
}

impl CachedRoute {
    /// Stable name: part of the cache key and of metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            CachedRoute::ChartData => "chart_data",
            CachedRoute::ChartDataGet { .. } => "chart_data_get",
            CachedRoute::ExploreJson => "explore_json",
            CachedRoute::ResultUrl => "chart_data_result",
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
    /// Object ids; empty when they could not be read (a bulk delete's
    /// `?q=!(1,2)` that does not parse, an id that is not plain digits): a
    /// success then purges everything.
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
///
/// The path is classified as Superset routes it: gunicorn percent-decodes it
/// (`%31` is `1`, `%2F` is `/`) and Werkzeug merges repeated slashes (with a
/// redirect), so `/api/v1/dataset/%31` is a write to dataset 1 and must purge
/// it. The cache key keeps the raw path; only the classification decodes.
pub fn classify(method: &Method, path: &str, query: Option<&str>, cfg: &RoutesConfig) -> Route {
    // The path of nearly every cached request, matched without splitting it.
    if cfg.chart_data
        && method == Method::POST
        && matches!(path, "/api/v1/chart/data" | "/api/v1/chart/data/")
    {
        return Route::Cached(CachedRoute::ChartData);
    }
    let decoded = routed_path(path);
    let path = decoded.as_ref();
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let mut seg = trimmed.split('/').filter(|s| !s.is_empty());
    let parts: [Option<&str>; 7] = [
        seg.next(),
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
            None,
        ] if cfg.chart_data && method == Method::POST => Route::Cached(CachedRoute::ChartData),
        [
            Some("api"),
            Some("v1"),
            Some("chart"),
            Some("data"),
            Some(_),
            None,
            None,
        ] if cfg.chart_data && method == Method::GET && crate::jobs::is_result_path(trimmed) => {
            Route::Cached(CachedRoute::ResultUrl)
        }
        [
            Some("api"),
            Some("v1"),
            Some("chart"),
            Some(id),
            Some("data"),
            None,
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
            None,
        ] if cfg.explore_json && (method == Method::GET || method == Method::POST) => {
            Route::Cached(CachedRoute::ExploreJson)
        }
        [Some("api"), Some("v1"), Some(obj), id, tail, sub, None] => {
            let kind = match obj {
                "chart" => ObjectKind::Chart,
                "dataset" => ObjectKind::Dataset,
                "database" => ObjectKind::Database,
                "dashboard" => ObjectKind::Dashboard,
                _ => return Route::Pass,
            };
            write_target(method, kind, id, tail, sub, query)
                .map(Route::Write)
                .unwrap_or(Route::Pass)
        }
        _ => Route::Pass,
    }
}

/// The path as Superset's router sees it: percent-decoded. Borrowed when
/// there is nothing to decode (nearly always). Bytes that are not UTF-8
/// become U+FFFD, which no id or route name contains.
fn routed_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    match String::from_utf8(percent_decode(path.as_bytes(), false)) {
        Ok(s) => std::borrow::Cow::Owned(s),
        Err(e) => std::borrow::Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Percent-decode `s` (`+` is a space when `plus_is_space`, as in query
/// strings). A `%` not followed by two hex digits stays as it is, as
/// Python's `unquote` leaves it.
pub(crate) fn percent_decode(s: &[u8], plus_is_space: bool) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The write a request makes, if any. An id that is not plain digits (` 1`,
/// `1;x`, a number beyond u64) may still reach an object — the database casts
/// it — so it names no object here: `ids` is empty and a success purges all.
fn write_target(
    method: &Method,
    kind: ObjectKind,
    id: Option<&str>,
    tail: Option<&str>,
    sub: Option<&str>,
    query: Option<&str>,
) -> Option<WriteTarget> {
    let one = |id: &str| WriteTarget {
        kind,
        ids: parse_id(id).into_iter().collect(),
    };
    match (id, tail, sub) {
        // PUT|DELETE /api/v1/{kind}/{id}
        (Some(id), None, None) if method == Method::PUT || method == Method::DELETE => {
            Some(one(id))
        }
        // PUT /api/v1/dataset/{id}/refresh
        (Some(id), Some("refresh"), None)
            if method == Method::PUT && kind == ObjectKind::Dataset =>
        {
            Some(one(id))
        }
        // DELETE /api/v1/dataset/{id}/column/{column_id} (and metric): the
        // dataset's results change.
        (Some(id), Some("column" | "metric"), Some(_))
            if method == Method::DELETE && kind == ObjectKind::Dataset =>
        {
            Some(one(id))
        }
        // DELETE /api/v1/{kind}/?q=!(1,2,3)  (bulk delete, rison list)
        (None, None, None) if method == Method::DELETE => Some(WriteTarget {
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
        // An async query's result_url: the same URL for every user.
        let qc = "/api/v1/chart/data/qc-0f3a9c";
        assert_eq!(c(Method::GET, qc), Route::Cached(CachedRoute::ResultUrl));
        assert_eq!(c(Method::POST, qc), Route::Pass);
        assert_eq!(c(Method::GET, "/api/v1/chart/data/other"), Route::Pass);
        assert_eq!(c(Method::DELETE, "/api/v1/chart/data/qc-1"), Route::Pass);
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
        // Beyond u64: no readable id, so a success purges everything.
        assert_eq!(
            c(Method::PUT, "/api/v1/chart/99999999999999999999999"),
            Route::Write(WriteTarget {
                kind: ObjectKind::Chart,
                ids: vec![]
            })
        );
    }

    fn write(kind: ObjectKind, ids: Vec<u64>) -> Route {
        Route::Write(WriteTarget { kind, ids })
    }

    /// What Werkzeug 3.1 routes (Superset 6.1 pins Werkzeug 3.1.9, gunicorn
    /// 23), checked with `werkzeug.routing.Map` on the path gunicorn's
    /// `unquote_to_wsgi_str` gives it: `%31` → `PUT dataset/<pk>` with pk `1`;
    /// `1%2Frefresh` → the refresh route; `//1` → a 308 to `/api/v1/dataset/1`;
    /// `1/` → 404; `%201` → pk ` 1` (the database may cast it to 1).
    #[test]
    fn writes_are_classified_on_the_decoded_path() {
        use ObjectKind::*;
        let ds1 = write(Dataset, vec![1]);
        for p in [
            "/api/v1/dataset/%31",
            "/api/v1/dataset/%30%31",
            "/api/v1/dataset/1/",
            "/api/v1/dataset//1",
            "/api/v1//dataset/1",
            "/api/v1/%64ataset/1",
            "/api/v1/dataset/1%2Frefresh",
            "/api/v1/dataset/1/refresh/",
        ] {
            assert_eq!(c(Method::PUT, p), ds1, "{p}");
        }
        assert_eq!(
            c(Method::DELETE, "/api/v1/chart/%34%32"),
            write(Chart, vec![42])
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/dataset/3/column/9"),
            write(Dataset, vec![3])
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/dataset/3/metric/9"),
            write(Dataset, vec![3])
        );
        // Ids Superset may still resolve, but not plainly: purge everything.
        for p in [
            "/api/v1/dataset/%201",
            "/api/v1/dataset/1;x",
            "/api/v1/dataset/%FF",
        ] {
            assert_eq!(c(Method::PUT, p), write(Dataset, vec![]), "{p}");
        }
        // Reads stay reads; decoding finds cached routes too.
        assert_eq!(c(Method::GET, "/api/v1/dataset/%31"), Route::Pass);
        assert_eq!(
            c(Method::GET, "/api/v1/chart/%32/data/"),
            Route::Cached(CachedRoute::ChartDataGet { chart_id: 2 })
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%41%2f%zz%4", false), b"aA/%zz%4");
        assert_eq!(percent_decode(b"a+b%2B", true), b"a b+");
        assert_eq!(percent_decode(b"%FF%fe", false), vec![0xff, 0xfe]);
    }
}
