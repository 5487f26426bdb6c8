//! Who a request is, as Superset decides it: a valid session cookie wins over
//! any Bearer token; embedded dashboards send a guest token instead. The
//! standard users and their tokens are the ones the fixtures name.

use std::collections::HashMap;

use http::HeaderMap;

use crate::gunicorn;

/// (user id, username); guests have id 0.
pub type User = (u64, String);

/// The standard users: (id, username, role names). carol has exactly alice's
/// roles (so a `roles` scope shares their entries).
pub const STANDARD: [(u64, &str, &[&str]); 4] = [
    (1, "admin", &["Admin"]),
    (2, "alice", &["sales_north", "Gamma"]),
    (3, "bob", &["Gamma", "sales_south"]),
    (4, "carol", &["Gamma", "sales_north"]),
];

/// Credentials Superset accepts, changeable while it runs.
#[derive(Debug, Default, Clone)]
pub struct Users {
    /// Bearer token → user.
    pub bearers: HashMap<String, User>,
    /// Session cookie value → user.
    pub sessions: HashMap<String, User>,
    /// User id → role names, for `/api/v1/me/roles/`.
    pub roles: HashMap<u64, Vec<String>>,
    /// Guest token (`X-GuestToken`) → name the chart data is answered for.
    pub guests: HashMap<String, String>,
}

impl Users {
    /// [`STANDARD`] with Bearer tokens `{name}-token` and sessions `{name}-session`.
    pub fn standard() -> Users {
        let mut u = Users::default();
        for (id, name, roles) in STANDARD {
            u.bearers
                .insert(format!("{name}-token"), (id, name.to_string()));
            u.sessions
                .insert(format!("{name}-session"), (id, name.to_string()));
            u.roles
                .insert(id, roles.iter().map(|s| s.to_string()).collect());
        }
        u
    }
}

/// Superset's rule: a valid session cookie wins; otherwise a valid Bearer;
/// otherwise a known guest token. Headers are read as gunicorn/Werkzeug read
/// them ([`gunicorn`]).
pub fn authenticate(
    bearers: &HashMap<String, User>,
    sessions: &HashMap<String, User>,
    guests: &HashMap<String, String>,
    h: &HeaderMap,
) -> Option<User> {
    let h = &gunicorn::joined(h);
    if let Some(val) = gunicorn::session_cookie(h)
        && let Some(u) = sessions.get(&val)
    {
        return Some(u.clone());
    }
    if let Some(b) = gunicorn::bearer(h)
        && let Some(u) = bearers.get(&b)
    {
        return Some(u.clone());
    }
    // Embedded dashboards: a guest token (no user id; 0 stands for "guest").
    let guest = h.get("x-guesttoken")?.to_str().ok()?;
    guests.get(guest).map(|name| (0, name.clone()))
}

/// Load-test users: any `Bearer user-{id}-…` token is user `user{id}`, so a
/// generator can make as many users and tokens as it wants without a table.
pub fn numbered(h: &HeaderMap) -> Option<User> {
    let id = gunicorn::bearer(&gunicorn::joined(h))?
        .strip_prefix("user-")?
        .split('-')
        .next()?
        .parse::<u64>()
        .ok()?;
    Some((id, format!("user{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn auth(h: &HeaderMap) -> Option<User> {
        let u = Users::standard();
        authenticate(&u.bearers, &u.sessions, &u.guests, h)
    }

    #[test]
    fn a_valid_session_wins_over_a_bearer() {
        let h = headers(&[
            ("authorization", "Bearer alice-token"),
            ("cookie", "session=admin-session"),
        ]);
        assert_eq!(auth(&h), Some((1, "admin".into())));
        let h = headers(&[
            ("authorization", "Bearer alice-token"),
            ("cookie", "session=nobody"),
        ]);
        assert_eq!(auth(&h), Some((2, "alice".into())));
        assert_eq!(auth(&headers(&[("authorization", "Bearer x")])), None);
    }

    #[test]
    fn numbered_tokens_name_their_user() {
        let h = headers(&[("authorization", "Bearer user-17-tok-3")]);
        assert_eq!(numbered(&h), Some((17, "user17".into())));
        assert_eq!(
            numbered(&headers(&[("authorization", "Bearer alice")])),
            None
        );
    }
}
