//! How Superset's server reads request headers: gunicorn joins repeated
//! headers into one WSGI value with `,`; Werkzeug splits cookies on `;` only
//! and Flask takes the first `session`; flask-jwt-extended splits
//! `Authorization` on `,` and takes the one `Bearer` item. Whatever a proxy
//! forwards is read this way, so the test upstream authenticates through it.

use http::{HeaderMap, HeaderValue};

/// Every header once, repeated values joined with `,` (gunicorn's WSGI environ).
pub fn joined(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in h.keys() {
        let mut v: Vec<u8> = Vec::new();
        for (i, part) in h.get_all(name).iter().enumerate() {
            if i > 0 {
                v.push(b',');
            }
            v.extend_from_slice(part.as_bytes());
        }
        out.insert(name.clone(), HeaderValue::from_bytes(&v).unwrap());
    }
    out
}

/// Flask's session cookie: the first `session` pair of the (joined) `Cookie`
/// value, split on `;` only.
pub fn session_cookie(h: &HeaderMap) -> Option<String> {
    let v = h.get(http::header::COOKIE)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    s.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "session").then(|| v.trim().to_string())
    })
}

/// flask-jwt-extended: the (joined) `Authorization` value stripped of
/// whitespace and commas, split on `,`; exactly one item of type `Bearer`.
pub fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let v = v.trim().trim_matches(',');
    let items: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|s| s.split_whitespace().next() == Some("Bearer"))
        .collect();
    match items[..] {
        [one] => one.split_whitespace().nth(1).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AUTHORIZATION, COOKIE};

    fn two(name: http::HeaderName, a: &str, b: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(name.clone(), HeaderValue::from_str(a).unwrap());
        h.append(name, HeaderValue::from_str(b).unwrap());
        joined(&h)
    }

    #[test]
    fn repeated_headers_are_joined_with_a_comma() {
        let h = two(COOKIE, "a=1", "session=s");
        assert_eq!(h.get(COOKIE).unwrap(), "a=1,session=s");
        // Split on `;` only: `a=1,session=s` is one pair named `a`.
        assert_eq!(session_cookie(&h), None);
        let h = two(COOKIE, "session=first", "x=1; session=second");
        assert_eq!(session_cookie(&h).as_deref(), Some("first,x=1"));
    }

    #[test]
    fn exactly_one_bearer_item_is_accepted() {
        let h = two(AUTHORIZATION, "Bearer a", "Basic x");
        assert_eq!(bearer(&h).as_deref(), Some("a"));
        let h = two(AUTHORIZATION, "Bearer a", "Bearer b");
        assert_eq!(bearer(&h), None);
    }
}
