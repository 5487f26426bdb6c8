//! What identity resolution answers: the principal, the scope a request's
//! entries are keyed by, and why a request gets none.

use std::sync::Arc;

use crate::config::IdentityKind;
use crate::credentials::Credentials;

/// A resolved principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Superset user id.
    pub user_id: u64,
    pub username: String,
}

/// Outcome of resolving a credential set.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Superset named a principal.
    Principal(Arc<Principal>),
    /// Superset refused the credential (401/403/422): never served from cache.
    Denied(u16),
}

/// Roles of a credential set as Superset reported them.
#[derive(Debug, Clone)]
pub enum RolesResolution {
    /// Sorted, deduplicated role names.
    Roles(Arc<Vec<String>>),
    /// Superset refused the credential.
    Denied(u16),
}

/// The identity scope that becomes part of the cache key. Every variant has
/// its own prefix in [`Scope::key_part`], so scopes of different kinds never
/// collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One Superset user.
    User(u64),
    /// Everyone holding exactly this set of roles (only via a `roles` rule).
    Roles(Arc<Vec<String>>),
    /// One guest token (no guest-token secret configured): blake3(token).
    GuestToken([u8; 32]),
    /// One verified guest grant: digest of `user`, `resources`, `rls_rules`.
    GuestGrant([u8; 32]),
    /// Everyone (only via an explicit `public` rule).
    Public,
}

impl Scope {
    /// Call `f` with [`Scope::key_part`], built on the stack for the common
    /// scopes (a user, public): it is needed on every hit.
    pub fn with_key_part<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Scope::User(id) => {
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(*id);
                let mut buf = [0u8; 5 + 20];
                buf[..5].copy_from_slice(b"user:");
                buf[5..5 + digits.len()].copy_from_slice(digits.as_bytes());
                f(std::str::from_utf8(&buf[..5 + digits.len()]).expect("ASCII"))
            }
            Scope::Public => f("public"),
            other => f(&other.key_part()),
        }
    }

    /// The string hashed into the key.
    pub fn key_part(&self) -> String {
        match self {
            Scope::User(id) => format!("user:{id}"),
            // A JSON array: role names may contain any character, and JSON
            // escaping keeps ["a,b"] and ["a","b"] apart.
            Scope::Roles(r) => format!("roles:{}", serde_json::to_string(&**r).unwrap_or_default()),
            Scope::GuestToken(d) => format!("guest-token:{}", hex::encode(d)),
            Scope::GuestGrant(d) => format!("guest-grant:{}", hex::encode(d)),
            Scope::Public => "public".to_string(),
        }
    }

    /// Label for metrics and logs (never the principal itself).
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::User(_) => "user",
            Scope::Roles(_) => "roles",
            Scope::GuestToken(_) | Scope::GuestGrant(_) => "guest",
            Scope::Public => "public",
        }
    }
}

/// What a credential set may be served under.
#[derive(Debug, Clone)]
pub enum ScopeOutcome {
    /// Serve and store under this scope.
    Scope(Scope),
    /// Refused (by Superset, or by local verification): never served from
    /// cache, forwarded so Superset answers for itself.
    Denied(Denial),
}

/// Why a credential was refused; `as_str()` is the `Cache-Status` detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Superset answered `/api/v1/me/` (or `/me/roles/`) with 401, 403 or 422.
    Superset,
    /// A Superset JWT failed local verification.
    JwtInvalid,
    /// A guest token failed verification or is not readable.
    GuestInvalid,
    /// A guest token's `exp` has passed, or cannot be read.
    GuestExpired,
}

impl Denial {
    pub fn as_str(&self) -> &'static str {
        match self {
            Denial::Superset => "identity-denied",
            Denial::JwtInvalid => "jwt-invalid",
            Denial::GuestInvalid => "guest-invalid",
            Denial::GuestExpired => "guest-expired",
        }
    }
}

impl IdentityKind {
    /// Classify a request's credential set. A guest token names the embedding
    /// context, so it decides the kind even when other credentials come along.
    pub fn of(creds: Option<&Credentials>) -> IdentityKind {
        match creds {
            None => IdentityKind::Anonymous,
            Some(c) if c.guest_token.is_some() => IdentityKind::Guest,
            Some(_) => IdentityKind::User,
        }
    }
}
