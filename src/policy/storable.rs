//! Whether a Superset response may be stored, and for how long Superset
//! itself would keep it.

use http::{HeaderMap, header};

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
