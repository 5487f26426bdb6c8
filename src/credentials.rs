//! The credential set of a cached-route request, and the credential headers
//! every upstream fetch for its key is rebuilt from.
//!
//! What keys an entry must be exactly what Superset sees. So the set is read
//! from the headers **after** hop-by-hop stripping (a `Connection` header may
//! name a header for removal), HTTP/2 cookie crumbs are joined first (RFC 9113
//! §8.2.3), and every fetch for the key (miss, coalesced leader, background
//! refresh, identity lookup) sends the resolved set rebuilt by [`apply`], never
//! the client's raw credential headers.
//!
//! Superset runs under gunicorn/Werkzeug, which join duplicate headers with `,`:
//! two `Authorization` headers become one comma list (flask-jwt-extended picks
//! the `Bearer` item), two `Cookie` headers become `a=1,session=x` (Werkzeug
//! splits cookies on `;` only, so `session` disappears into `a`'s value). A
//! request whose credentials could be read in more than one way is therefore
//! [`Extracted::Ambiguous`]: forwarded uncached, never keyed.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The credential-bearing parts of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub authorization: Option<HeaderValue>,
    /// Value of the session cookie only (other cookies are irrelevant to identity).
    pub session: Option<String>,
    pub guest_token: Option<HeaderValue>,
}

/// Why a request's credentials cannot be read one way only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// More than one `Authorization` header.
    DuplicateAuthorization,
    /// An `Authorization` header with no value.
    EmptyAuthorization,
    /// More than one guest-token header.
    DuplicateGuestToken,
    /// A guest-token header with no value.
    EmptyGuestToken,
    /// The session cookie more than once.
    SessionCookieTwice,
    /// An HTTP/1 request with several `Cookie` headers, one carrying the
    /// session cookie (Superset's server would join them with `,`).
    SessionInSeveralCookieHeaders,
    /// `Connection` names a credential header (it would be stripped on the way).
    ConnectionNamesCredential,
    /// A `Cookie` header that is not visible ASCII.
    NonAsciiCookie,
}

impl Ambiguity {
    /// Label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ambiguity::DuplicateAuthorization => "duplicate-authorization",
            Ambiguity::EmptyAuthorization => "empty-authorization",
            Ambiguity::DuplicateGuestToken => "duplicate-guest-token",
            Ambiguity::EmptyGuestToken => "empty-guest-token",
            Ambiguity::SessionCookieTwice => "session-cookie-twice",
            Ambiguity::SessionInSeveralCookieHeaders => "session-in-several-cookie-headers",
            Ambiguity::ConnectionNamesCredential => "connection-names-credential",
            Ambiguity::NonAsciiCookie => "non-ascii-cookie",
        }
    }
}

/// What a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// No credential at all.
    None,
    /// Exactly one reading.
    Set(Credentials),
    /// More than one reading: forward uncached.
    Ambiguous(Ambiguity),
}

/// Prepare a cached-route request's headers and read its credential set:
/// refuse a `Connection` header naming a credential header, strip hop-by-hop
/// headers, join HTTP/2 cookie crumbs with `; `, then extract. The headers are
/// left as every later step (and [`apply`]) sees them.
pub fn extract(
    headers: &mut HeaderMap,
    version: Version,
    cookie_name: &str,
    guest_header: &HeaderName,
) -> Extracted {
    if headers.contains_key(header::CONNECTION) {
        let names_credential = |v: &HeaderValue| {
            v.as_bytes().split(|b| *b == b',').any(|n| {
                let n = n.trim_ascii();
                n.eq_ignore_ascii_case(b"authorization")
                    || n.eq_ignore_ascii_case(b"cookie")
                    || n.eq_ignore_ascii_case(guest_header.as_str().as_bytes())
            })
        };
        if headers
            .get_all(header::CONNECTION)
            .iter()
            .any(names_credential)
        {
            return Extracted::Ambiguous(Ambiguity::ConnectionNamesCredential);
        }
        crate::upstream::strip_hop_by_hop(headers, false);
    } else if headers.contains_key(header::TE)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key("keep-alive")
        || headers.contains_key(header::PROXY_AUTHORIZATION)
    {
        // The common request has no hop-by-hop header: skip the rest of the list.
        crate::upstream::strip_hop_by_hop(headers, false);
    }
    if version == Version::HTTP_2 && headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        match join_cookie_crumbs(headers) {
            Some(v) => {
                headers.insert(header::COOKIE, v);
            }
            None => return Extracted::Ambiguous(Ambiguity::NonAsciiCookie),
        }
    }
    let authorization = match single(headers, &header::AUTHORIZATION) {
        Ok(v) => v,
        Err(Some(())) => return Extracted::Ambiguous(Ambiguity::DuplicateAuthorization),
        Err(None) => return Extracted::Ambiguous(Ambiguity::EmptyAuthorization),
    };
    let guest_token = match single(headers, guest_header) {
        Ok(v) => v,
        Err(Some(())) => return Extracted::Ambiguous(Ambiguity::DuplicateGuestToken),
        Err(None) => return Extracted::Ambiguous(Ambiguity::EmptyGuestToken),
    };
    let session = match session_cookie(headers, cookie_name) {
        Ok(s) => s,
        Err(a) => return Extracted::Ambiguous(a),
    };
    if authorization.is_none() && guest_token.is_none() && session.is_none() {
        return Extracted::None;
    }
    Extracted::Set(Credentials {
        authorization,
        session,
        guest_token,
    })
}

/// The only value of `name`: `Err(Some(()))` when there are several,
/// `Err(None)` when the one value is blank.
fn single(h: &HeaderMap, name: &HeaderName) -> Result<Option<HeaderValue>, Option<()>> {
    let mut all = h.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Some(()));
    }
    if first.as_bytes().trim_ascii().is_empty() {
        return Err(None);
    }
    Ok(Some(first.clone()))
}

/// HTTP/2 cookie crumbs as one `Cookie` value; `None` if one is not ASCII.
fn join_cookie_crumbs(h: &HeaderMap) -> Option<HeaderValue> {
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        v.to_str().ok()?;
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Split one `Cookie` value into its `name=value` pairs, trimmed, empty ones
/// skipped (Werkzeug splits on `;` only).
fn pairs(v: &str) -> impl Iterator<Item = &str> {
    v.split(';').map(str::trim).filter(|p| !p.is_empty())
}

/// Whether a cookie pair is the session cookie (a bare `session` counts:
/// Werkzeug reads it as the session cookie with an empty value).
fn is_session(pair: &str, name: &str) -> bool {
    pair.split_once('=').map_or(pair, |(k, _)| k).trim() == name
}

/// The session cookie's value, read across every `Cookie` header. An empty
/// value is no session (Superset starts a fresh, anonymous one).
fn session_cookie(h: &HeaderMap, name: &str) -> Result<Option<String>, Ambiguity> {
    let mut found: Option<&str> = None;
    let mut headers = 0;
    let mut carrying = 0;
    for v in h.get_all(header::COOKIE) {
        headers += 1;
        let s = v.to_str().map_err(|_| Ambiguity::NonAsciiCookie)?;
        let mut here = false;
        for pair in pairs(s).filter(|p| is_session(p, name)) {
            if found.is_some() {
                return Err(Ambiguity::SessionCookieTwice);
            }
            found = Some(pair.split_once('=').map_or("", |(_, v)| v.trim()));
            here = true;
        }
        carrying += usize::from(here);
    }
    if carrying > 0 && headers > 1 {
        return Err(Ambiguity::SessionInSeveralCookieHeaders);
    }
    Ok(found.filter(|v| !v.is_empty()).map(str::to_string))
}

impl Credentials {
    /// The same set in its own allocations, for keeping beyond the request
    /// (see `upstream::owned_header_value`).
    pub fn detached(&self) -> Credentials {
        Credentials {
            authorization: self
                .authorization
                .as_ref()
                .map(crate::upstream::owned_header_value),
            session: self.session.clone(),
            guest_token: self
                .guest_token
                .as_ref()
                .map(crate::upstream::owned_header_value),
        }
    }

    /// blake3 over the whole set, each part length-prefixed and tagged, so no
    /// two different sets share a digest. Only digests are kept in memory maps.
    pub fn digest(&self) -> [u8; 32] {
        // Gathered, then hashed at once (see `key::Gather`).
        let mut g = crate::key::Gather::<1024>::default();
        let mut part = |tag: u8, v: Option<&[u8]>| {
            g.push(&[tag]);
            crate::key::hash_optional_part(&mut |b| g.push(b), v);
        };
        part(b'a', self.authorization.as_ref().map(|v| v.as_bytes()));
        part(b's', self.session.as_ref().map(|v| v.as_bytes()));
        part(b'g', self.guest_token.as_ref().map(|v| v.as_bytes()));
        *blake3::hash(g.as_slice()).as_bytes()
    }
}

/// Rebuild the credential headers of an upstream request from `creds`:
/// `Authorization` and the guest-token header are exactly the set's, and one
/// `Cookie` header carries the other cookies of `headers` followed by the
/// set's session cookie (never a session cookie of the request's own).
pub fn apply(
    creds: Option<&Credentials>,
    headers: &mut HeaderMap,
    cookie_name: &str,
    guest_header: &HeaderName,
) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(guest_header);
    let mut cookie = String::new();
    for v in headers.get_all(header::COOKIE) {
        // Non-ASCII cookie headers never get here (ambiguous); drop them anyway.
        let Ok(s) = v.to_str() else { continue };
        for pair in pairs(s).filter(|p| !is_session(p, cookie_name)) {
            if !cookie.is_empty() {
                cookie.push_str("; ");
            }
            cookie.push_str(pair);
        }
    }
    headers.remove(header::COOKIE);
    let Some(creds) = creds else {
        insert_cookie(headers, &cookie);
        return;
    };
    if let Some(s) = &creds.session {
        if !cookie.is_empty() {
            cookie.push_str("; ");
        }
        cookie.push_str(cookie_name);
        cookie.push('=');
        cookie.push_str(s);
    }
    insert_cookie(headers, &cookie);
    if let Some(a) = &creds.authorization {
        headers.insert(header::AUTHORIZATION, a.clone());
    }
    if let Some(g) = &creds.guest_token {
        headers.insert(guest_header.clone(), g.clone());
    }
}

fn insert_cookie(headers: &mut HeaderMap, cookie: &str) {
    if cookie.is_empty() {
        return;
    }
    if let Ok(mut v) = HeaderValue::from_str(cookie) {
        v.set_sensitive(true);
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gh() -> HeaderName {
        HeaderName::from_static("x-guesttoken")
    }

    fn headers(list: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn ex(list: &[(&str, &[u8])], v: Version) -> Extracted {
        extract(&mut headers(list), v, "session", &gh())
    }

    fn amb(list: &[(&str, &[u8])]) -> Ambiguity {
        match ex(list, Version::HTTP_11) {
            Extracted::Ambiguous(a) => a,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn no_credentials_is_none() {
        let got = ex(&[("cookie", b"other=1; theme=dark")], Version::HTTP_11);
        assert_eq!(got, Extracted::None);
    }

    #[test]
    fn ambiguous_shapes() {
        use Ambiguity::*;
        let bob = &b"Bearer bob-token"[..];
        assert_eq!(
            amb(&[
                ("authorization", bob),
                ("cookie", b"session=alice-session"),
                ("connection", b"keep-alive, cookie"),
            ]),
            ConnectionNamesCredential
        );
        assert_eq!(
            amb(&[("authorization", bob), ("connection", b"Authorization")]),
            ConnectionNamesCredential
        );
        assert_eq!(
            amb(&[
                ("x-guesttoken", b"t"),
                ("connection", b"close, X-GuestToken")
            ]),
            ConnectionNamesCredential
        );
        assert_eq!(
            amb(&[
                ("authorization", bob),
                ("cookie", b"theme=dark"),
                ("cookie", b"session=alice-session"),
            ]),
            SessionInSeveralCookieHeaders
        );
        assert_eq!(
            amb(&[
                ("x-guesttoken", b"made-up"),
                ("authorization", b""),
                ("authorization", bob),
            ]),
            DuplicateAuthorization
        );
        assert_eq!(
            amb(&[("x-guesttoken", b"made-up"), ("authorization", b"  ")]),
            EmptyAuthorization
        );
        assert_eq!(amb(&[("x-guesttoken", b"")]), EmptyGuestToken);
        assert_eq!(
            amb(&[("x-guesttoken", b"a"), ("x-guesttoken", b"b")]),
            DuplicateGuestToken
        );
        assert_eq!(
            amb(&[("cookie", b"session=a; session=b")]),
            SessionCookieTwice
        );
        assert_eq!(
            amb(&[("cookie", b"session=a; session")]),
            SessionCookieTwice
        );
        assert_eq!(amb(&[("cookie", b"session=caf\xc3\xa9")]), NonAsciiCookie);
    }

    #[test]
    fn http2_crumbs_are_one_cookie() {
        let list: &[(&str, &[u8])] = &[
            ("authorization", b"Bearer bob-token"),
            ("cookie", b"theme=dark"),
            ("cookie", b"session=alice-session"),
        ];
        let mut h = headers(list);
        let Extracted::Set(c) = extract(&mut h, Version::HTTP_2, "session", &gh()) else {
            panic!()
        };
        assert_eq!(c.session.as_deref(), Some("alice-session"));
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "theme=dark; session=alice-session");
        // Two crumbs both carrying the session cookie are still twice.
        let twice: &[(&str, &[u8])] = &[("cookie", b"session=a"), ("cookie", b"session=b")];
        assert_eq!(
            ex(twice, Version::HTTP_2),
            Extracted::Ambiguous(Ambiguity::SessionCookieTwice)
        );
    }

    #[test]
    fn hop_by_hop_is_gone_before_extraction() {
        let mut h = headers(&[
            ("authorization", b"Bearer a"),
            ("connection", b"keep-alive, x-other"),
            ("x-other", b"1"),
            ("te", b"trailers"),
        ]);
        assert!(matches!(
            extract(&mut h, Version::HTTP_11, "session", &gh()),
            Extracted::Set(_)
        ));
        assert!(
            !h.contains_key("connection") && !h.contains_key("x-other") && !h.contains_key("te")
        );
    }

    #[test]
    fn empty_session_is_no_session_and_never_forwarded() {
        let mut h = headers(&[("authorization", b"Bearer a"), ("cookie", b"session=; a=1")]);
        let Extracted::Set(c) = extract(&mut h, Version::HTTP_11, "session", &gh()) else {
            panic!()
        };
        assert_eq!(c.session, None);
        apply(Some(&c), &mut h, "session", &gh());
        assert_eq!(h[header::COOKIE], "a=1");
    }

    #[test]
    fn apply_sends_exactly_the_set() {
        let mut h = headers(&[
            ("authorization", b"Bearer raw"),
            ("x-guesttoken", b"raw"),
            ("cookie", b"a=1; session=raw"),
            ("cookie", b"b=2"),
        ]);
        let set = Credentials {
            authorization: Some(HeaderValue::from_static("Bearer resolved")),
            session: Some("resolved".into()),
            guest_token: None,
        };
        apply(Some(&set), &mut h, "session", &gh());
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Bearer resolved");
        assert!(!h.contains_key("x-guesttoken"));
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; session=resolved");
        apply(None, &mut h, "session", &gh());
        assert!(!h.contains_key(header::AUTHORIZATION));
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn the_whole_set_is_the_credential() {
        let x = Credentials {
            authorization: None,
            session: Some("ab".into()),
            guest_token: None,
        };
        let y = Credentials {
            authorization: Some(HeaderValue::from_static("ab")),
            session: None,
            guest_token: None,
        };
        assert_ne!(x.digest(), y.digest());
    }
}
