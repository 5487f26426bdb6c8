//! Identity: who is asking. The credential set (`Authorization`, the session
//! cookie, the guest-token header, taken together) is resolved to a principal by
//! asking Superset `GET /api/v1/me/` with exactly that set, because Superset
//! decides which credential wins (a valid session cookie beats any Bearer token,
//! fixtures 14, 15, 32). Mappings are cached for `identity.ttl_secs` and
//! concurrent lookups for the same credential set are coalesced.
//!
//! Unverified claims (e.g. the `sub` of a JWT nobody checked) are never used.
//!
//! Shortcuts that avoid the `/me` round trip, each only where Superset would
//! reach the same answer:
//! - a **guest token alone** (no `Authorization`, no session cookie) is its own
//!   scope: blake3(token), or, with the guest-token secret configured, the
//!   verified grant (`user`, `resources`, `rls_rules`);
//! - a **Bearer access token alone** (no session cookie, which would win at
//!   Superset; no guest token) is verified locally when Superset's JWT secret
//!   is configured, and its `sub` is the user.
//!
//! `roles` scope asks `GET /api/v1/me/roles/` with the whole credential set and
//! keys on the sorted role names (cached like the user lookup).

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::BodyExt;

use crate::body::empty;
use crate::config::IdentityConfig;
use crate::config::ScopeKind;
use crate::error::Error;
use crate::jwt::{AccessTokenVerifier, GuestTokenVerifier};
use crate::metrics::Metrics;
use crate::upstream::Upstream;

pub use crate::credentials::{Credentials, Extracted};

mod scope;
mod ttl;
pub use scope::{Denial, Principal, Resolution, RolesResolution, Scope, ScopeOutcome};
use ttl::TtlCache;

/// Resolves credential sets to principals, with a TTL cache and coalesced lookups.
pub struct IdentityResolver {
    /// Credential digest → principal (`/api/v1/me/`).
    users: TtlCache<Resolution>,
    /// Credential digest → role names (`/api/v1/me/roles/`).
    roles: TtlCache<RolesResolution>,
    access: Option<AccessTokenVerifier>,
    guest: Option<GuestTokenVerifier>,
    cfg: IdentityConfig,
    guest_header: HeaderName,
    metrics: Arc<Metrics>,
}

impl IdentityResolver {
    /// Build the resolver, reading the JWT secrets when configured (a secret
    /// that is configured but cannot be read is a startup error).
    pub fn new(cfg: &IdentityConfig, metrics: Arc<Metrics>) -> anyhow::Result<IdentityResolver> {
        let guest_header = HeaderName::from_bytes(cfg.guest_token_header.as_bytes())?;
        let access = crate::jwt::load_secret(
            cfg.jwt_secret_env.as_deref(),
            cfg.jwt_secret_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("identity.jwt_secret: {e}"))?
        .map(|s| AccessTokenVerifier::new(&s));
        let guest = crate::jwt::load_secret(
            cfg.guest_token_secret_env.as_deref(),
            cfg.guest_token_secret_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("identity.guest_token_secret: {e}"))?
        .map(|s| {
            GuestTokenVerifier::new(&s, cfg.guest_token_audience.as_deref().unwrap_or_default())
        });
        Ok(IdentityResolver {
            users: TtlCache::new(cfg.max_entries),
            roles: TtlCache::new(cfg.max_entries),
            access,
            guest,
            cfg: cfg.clone(),
            guest_header,
            metrics,
        })
    }

    /// The credential set of a request, read after hop-by-hop stripping
    /// (see [`crate::credentials::extract`]); the headers are left stripped.
    pub fn credentials(&self, h: &mut HeaderMap, version: http::Version) -> Extracted {
        crate::credentials::extract(h, version, &self.cfg.session_cookie, &self.guest_header)
    }

    /// Resolve a credential set. Concurrent calls for the same set share one
    /// Superset lookup; errors (Superset down) are not cached.
    pub async fn resolve(
        &self,
        creds: &Credentials,
        upstream: &Upstream,
    ) -> Result<Resolution, Error> {
        let digest = creds.digest();
        if let Some(r) = self.users.fresh(&digest) {
            return Ok(r);
        }
        // Boxed: a miss's state (the call to Superset) stays out of the
        // future every hit carries.
        let lookup = async {
            let r = self.lookup(creds, upstream).await;
            self.count(match &r {
                Ok(Resolution::Principal(_)) => "principal",
                Ok(Resolution::Denied(_)) => "denied",
                Err(_) => "error",
            });
            r
        };
        let positive = |r: &Resolution| matches!(r, Resolution::Principal(_));
        Box::pin(self.users.through(digest, self.ttls(), positive, lookup)).await
    }
    /// Forget every cached mapping (e.g. after a permission change was announced).
    pub fn clear(&self) {
        self.users.clear();
        self.roles.clear();
    }

    /// How long a positive and a negative answer are kept.
    fn ttls(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.cfg.ttl_secs),
            Duration::from_secs(self.cfg.negative_ttl_secs),
        )
    }

    fn count(&self, label: &str) {
        self.metrics
            .identity_lookups
            .with_label_values(&[label])
            .inc();
    }

    /// The scope a credential set is served under for a `user` or `roles` rule.
    pub async fn scope(
        &self,
        creds: &Credentials,
        kind: ScopeKind,
        upstream: &Upstream,
    ) -> Result<ScopeOutcome, Error> {
        // A guest token alone: Superset has no other credential to prefer.
        if creds.authorization.is_none()
            && creds.session.is_none()
            && let Some(g) = &creds.guest_token
        {
            return Ok(self.guest_scope(g));
        }
        // A Bearer token alone, verified locally. With a session cookie present
        // Superset would answer as the cookie's user (fixtures 14, 15, 32), and
        // with a guest token the precedence is Superset's business: both go to
        // Superset.
        let mut local_user = None;
        if let (Some(v), None, None) = (&self.access, &creds.session, &creds.guest_token)
            && let Some(token) = bearer(creds)
        {
            match v.verify(token) {
                Ok(id) => {
                    self.count("local");
                    local_user = Some(id);
                }
                Err(e) => {
                    self.count("local-denied");
                    tracing::debug!(error = %e, "bearer token failed local verification");
                    return Ok(ScopeOutcome::Denied(Denial::JwtInvalid));
                }
            }
        }
        match kind {
            ScopeKind::Roles => match self.resolve_roles(creds, upstream).await? {
                RolesResolution::Roles(r) => Ok(ScopeOutcome::Scope(Scope::Roles(r))),
                RolesResolution::Denied(_) => Ok(ScopeOutcome::Denied(Denial::Superset)),
            },
            ScopeKind::User | ScopeKind::Public => {
                if let Some(id) = local_user {
                    return Ok(ScopeOutcome::Scope(Scope::User(id)));
                }
                match self.resolve(creds, upstream).await? {
                    Resolution::Principal(p) => Ok(ScopeOutcome::Scope(Scope::User(p.user_id))),
                    Resolution::Denied(_) => Ok(ScopeOutcome::Denied(Denial::Superset)),
                }
            }
        }
    }

    /// Scope of a guest-only credential. Without a secret the token itself is
    /// the scope: an entry under it exists only if Superset answered that very
    /// token with 200, so its `exp` is authentic and is used to stop hits once
    /// it has passed. With a secret the token must verify.
    fn guest_scope(&self, token: &HeaderValue) -> ScopeOutcome {
        let Ok(token) = token.to_str() else {
            return ScopeOutcome::Denied(Denial::GuestInvalid);
        };
        match &self.guest {
            Some(v) => match v.verify(token) {
                Ok(grant) => {
                    self.count("guest");
                    ScopeOutcome::Scope(Scope::GuestGrant(grant))
                }
                Err(e) => {
                    self.count("guest-denied");
                    tracing::debug!(error = %e, "guest token failed verification");
                    ScopeOutcome::Denied(Denial::GuestInvalid)
                }
            },
            None => {
                // An `exp` that is missing or unreadable withholds hits too:
                // such a token could otherwise be served for as long as the
                // tier keeps its entries.
                if crate::jwt::unverified_expired(token) {
                    self.count("guest-denied");
                    return ScopeOutcome::Denied(Denial::GuestExpired);
                }
                self.count("guest");
                let mut h = blake3::Hasher::new();
                h.update(b"chartcache-guest-token-v1\0");
                h.update(token.as_bytes());
                ScopeOutcome::Scope(Scope::GuestToken(*h.finalize().as_bytes()))
            }
        }
    }

    /// Roles of a credential set, cached and coalesced like [`Self::resolve`].
    pub async fn resolve_roles(
        &self,
        creds: &Credentials,
        upstream: &Upstream,
    ) -> Result<RolesResolution, Error> {
        let digest = creds.digest();
        if let Some(r) = self.roles.fresh(&digest) {
            return Ok(r);
        }
        let lookup = async {
            let r = self.lookup_roles(creds, upstream).await;
            self.count(match &r {
                Ok(RolesResolution::Roles(_)) => "roles",
                Ok(RolesResolution::Denied(_)) => "roles-denied",
                Err(_) => "roles-error",
            });
            r
        };
        let positive = |r: &RolesResolution| matches!(r, RolesResolution::Roles(_));
        Box::pin(self.roles.through(digest, self.ttls(), positive, lookup)).await
    }

    async fn lookup_roles(
        &self,
        creds: &Credentials,
        upstream: &Upstream,
    ) -> Result<RolesResolution, Error> {
        let (status, body) = self.get_as(creds, upstream, &self.cfg.roles_path).await?;
        match status {
            200 => parse_roles(&body).map(|r| RolesResolution::Roles(Arc::new(r))),
            401 | 403 | 422 => Ok(RolesResolution::Denied(status)),
            other => Err(Error::Upstream(format!("/me/roles answered {other}"))),
        }
    }

    /// `GET path` at Superset with exactly this credential set.
    async fn get_as(
        &self,
        creds: &Credentials,
        upstream: &Upstream,
        path: &str,
    ) -> Result<(u16, bytes::Bytes), Error> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(upstream.uri_for(path))
            .body(empty())
            .map_err(|e| Error::Internal(e.to_string()))?;
        crate::credentials::apply(
            Some(creds),
            req.headers_mut(),
            &self.cfg.session_cookie,
            &self.guest_header,
        );
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let resp = upstream.send(req).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Upstream(format!("reading {path}: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    async fn lookup(&self, creds: &Credentials, upstream: &Upstream) -> Result<Resolution, Error> {
        let (status, body) = self.get_as(creds, upstream, &self.cfg.me_path).await?;
        match status {
            200 => parse_me(&body).map(|p| Resolution::Principal(Arc::new(p))),
            401 | 403 | 422 => Ok(Resolution::Denied(status)),
            other => Err(Error::Upstream(format!("/me answered {other}"))),
        }
    }
}

/// The bearer token of `Authorization: Bearer <token>`, if that is its form.
fn bearer(creds: &Credentials) -> Option<&str> {
    creds
        .authorization
        .as_ref()?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Sorted role names from `/api/v1/me/roles/`: `result.roles` is an object
/// keyed by role name (fixture 04).
fn parse_roles(body: &[u8]) -> Result<Vec<String>, Error> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::Upstream(format!("/me/roles body: {e}")))?;
    let roles = v["result"]["roles"]
        .as_object()
        .ok_or_else(|| Error::Upstream("/me/roles body has no result.roles".into()))?;
    let mut names: Vec<String> = roles.keys().cloned().collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn parse_me(body: &[u8]) -> Result<Principal, Error> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Error::Upstream(format!("/me body: {e}")))?;
    let r = &v["result"];
    let user_id = r["id"]
        .as_u64()
        .ok_or_else(|| Error::Upstream("/me body has no result.id".into()))?;
    if r["is_anonymous"].as_bool() == Some(true) {
        return Err(Error::Upstream(
            "/me answered an anonymous user with 200".into(),
        ));
    }
    Ok(Principal {
        user_id,
        username: r["username"].as_str().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fixture;

    fn cfg() -> IdentityConfig {
        IdentityConfig::default()
    }
    fn gh() -> HeaderName {
        HeaderName::from_static("x-guesttoken")
    }

    #[test]
    fn the_whole_set_is_the_credential() {
        let bearer = HeaderValue::from_static("Bearer alice");
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, bearer.clone());
        let mut b = a.clone();
        b.insert(
            header::COOKIE,
            HeaderValue::from_static("session=admin-cookie"),
        );
        let read = |h: &mut HeaderMap| match crate::credentials::extract(
            h,
            http::Version::HTTP_11,
            &cfg().session_cookie,
            &gh(),
        ) {
            Extracted::Set(c) => c,
            other => panic!("{other:?}"),
        };
        let (ca, cb) = (read(&mut a), read(&mut b));
        // Same Bearer, but one also carries a session cookie (which Superset lets win):
        // they must never share a resolution.
        assert_ne!(ca.digest(), cb.digest());
        assert_eq!(cb.session.as_deref(), Some("admin-cookie"));
    }

    #[test]
    fn parses_superset_roles() {
        let f = fixture("04-me-roles-alice-bearer.json");
        let r = parse_roles(&serde_json::to_vec(&f["response"]["body"]).unwrap()).unwrap();
        assert_eq!(r, vec!["Gamma".to_string(), "sales_north".to_string()]);
        assert!(parse_roles(br#"{"result": {}}"#).is_err());
    }

    #[test]
    fn scope_key_parts_never_collide() {
        let roles = |v: &[&str]| Scope::Roles(Arc::new(v.iter().map(|s| s.to_string()).collect()));
        let parts = [
            Scope::User(1).key_part(),
            roles(&["a,b"]).key_part(),
            roles(&["a", "b"]).key_part(),
            Scope::GuestToken([1; 32]).key_part(),
            Scope::GuestGrant([1; 32]).key_part(),
            Scope::Public.key_part(),
        ];
        let set: std::collections::HashSet<_> = parts.iter().collect();
        assert_eq!(set.len(), parts.len());
    }

    #[test]
    fn key_part_on_the_stack_is_the_same_string() {
        let scopes = [
            Scope::User(0),
            Scope::User(42),
            Scope::User(u64::MAX),
            Scope::Roles(Arc::new(vec!["Gamma".into()])),
            Scope::GuestToken([7; 32]),
            Scope::GuestGrant([8; 32]),
            Scope::Public,
        ];
        for s in scopes {
            assert_eq!(s.with_key_part(str::to_string), s.key_part(), "{s:?}");
        }
        assert_eq!(Scope::User(42).key_part(), "user:42");
    }

    #[test]
    fn parses_superset_me() {
        let f = fixture("03-me-alice-bearer.json");
        let p = parse_me(&serde_json::to_vec(&f["response"]["body"]).unwrap()).unwrap();
        assert_eq!(
            p,
            Principal {
                user_id: 2,
                username: "alice".into()
            }
        );
        assert!(parse_me(br#"{"msg":"Missing Authorization Header"}"#).is_err());
    }
}
