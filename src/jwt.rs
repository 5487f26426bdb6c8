//! Local verification of Superset-issued JWTs (HS256).
//!
//! Two kinds of token are checked here, each with its own secret:
//! - **access tokens** (`Authorization: Bearer …`, flask-jwt-extended, signed
//!   with Superset's `JWT_SECRET_KEY`/`SECRET_KEY`): signature, `exp`, `nbf`,
//!   `type == "access"`; `sub` names the user id.
//! - **guest tokens** (embedded dashboards, signed with
//!   `GUEST_TOKEN_JWT_SECRET`): signature, `exp`, `aud`, `type == "guest"`; the
//!   `user`, `resources` and `rls_rules` claims are the grant.
//!
//! Nothing in a token is read before its signature and expiry check passed,
//! except in [`unverified_exp`], whose result may only ever *withhold* cache hits.
//! No leeway is granted on `exp`: Superset rejects an expired token at once, so
//! a grace period here would serve cached data to a token Superset refuses.
//!
//! `exp` and `nbf` are checked here, not by `jsonwebtoken`, the way PyJWT
//! (behind flask-jwt-extended and Superset's guest tokens) checks them:
//! Superset writes a guest token's `exp` as `time.time() + N`, a float, which
//! PyJWT reads as `int(exp)` and refuses once `exp <= now`. A number of
//! either form is accepted; a missing or unreadable `exp` refuses the token.

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Signature, format, `exp`, `nbf` or `aud` check failed.
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The token verified but is of another kind (e.g. a refresh token).
    #[error("token type {0:?} is not accepted here")]
    WrongType(String),
    /// `sub` is missing or not a user id.
    #[error("token subject is not a user id")]
    BadSubject,
    /// `exp` is missing or not a number.
    #[error("token has no readable exp")]
    NoExpiry,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future or not a number.
    #[error("token not valid yet")]
    NotYetValid,
}

/// Seconds of a NumericDate claim as PyJWT reads it (`int(value)`): an
/// integer, or a float truncated toward zero; negative values are 0.
pub fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    if v.as_i64().is_some() {
        return Some(0);
    }
    let f = v.as_f64()?;
    f.is_finite().then(|| {
        if f <= 0.0 {
            0
        } else {
            f.trunc().min(u64::MAX as f64) as u64
        }
    })
}

/// Unix seconds now (the fraction dropped: for integer claims `c <= now` and
/// `c > now` give the same answer with or without it).
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

/// PyJWT's `exp`/`nbf` checks without leeway: `exp` required and `> now`,
/// `nbf` (when present) `<= now`.
fn check_times(claims: &serde_json::Value, now: u64) -> Result<(), JwtError> {
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(JwtError::NoExpiry)?;
    if exp <= now {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf")
        && numeric_date(nbf).is_none_or(|nbf| nbf > now)
    {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

/// Signature-only validation: the time claims are [`check_times`]'s.
fn signature_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims::<&str>(&[]);
    validation
}

/// Where a secret comes from. Secrets never live in the config file itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("secret file {0}: {1}")]
    File(String, std::io::Error),
    #[error("secret file {0} is empty")]
    EmptyFile(String),
}

/// Read a secret from the environment variable `env` or from `file` (the
/// environment wins). Trailing newlines of files are not part of the secret.
pub fn load_secret(env: Option<&str>, file: Option<&str>) -> Result<Option<Vec<u8>>, SecretError> {
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v.into_bytes())),
            _ => Err(SecretError::MissingEnv(name.to_string())),
        };
    }
    if let Some(f) = file {
        let raw = std::fs::read(Path::new(f)).map_err(|e| SecretError::File(f.to_string(), e))?;
        let mut v = raw;
        while matches!(v.last(), Some(b'\n' | b'\r')) {
            v.pop();
        }
        if v.is_empty() {
            return Err(SecretError::EmptyFile(f.to_string()));
        }
        return Ok(Some(v));
    }
    Ok(None)
}

/// Verifies Superset access tokens.
pub struct AccessTokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct AccessClaims {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    sub: Option<serde_json::Value>,
}

impl AccessTokenVerifier {
    pub fn new(secret: &[u8]) -> AccessTokenVerifier {
        // `sub` is checked below: jsonwebtoken only accepts string subjects.
        let mut validation = signature_validation();
        // Superset access tokens carry no audience; one that does is not Superset's.
        validation.validate_aud = true;
        AccessTokenVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The Superset user id of a valid access token.
    pub fn verify(&self, token: &str) -> Result<u64, JwtError> {
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)?;
        check_times(&data.claims, now_secs())?;
        let claims: AccessClaims =
            serde_json::from_value(data.claims).map_err(|_| JwtError::BadSubject)?;
        let kind = claims.kind.unwrap_or_default();
        if kind != "access" {
            return Err(JwtError::WrongType(kind));
        }
        // flask-jwt-extended writes the identity as a string ("1"); older
        // Flask-AppBuilder versions wrote a number.
        match claims.sub {
            Some(serde_json::Value::String(s)) => s.parse().map_err(|_| JwtError::BadSubject),
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or(JwtError::BadSubject),
            _ => Err(JwtError::BadSubject),
        }
    }
}

/// Verifies embedded-dashboard guest tokens.
pub struct GuestTokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct GuestClaims {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    user: serde_json::Value,
    #[serde(default)]
    resources: serde_json::Value,
    #[serde(default)]
    rls_rules: serde_json::Value,
}

impl GuestTokenVerifier {
    /// `audience` is Superset's `GUEST_TOKEN_JWT_AUDIENCE` (or the URL Superset
    /// uses when it is unset).
    pub fn new(secret: &[u8], audience: &str) -> GuestTokenVerifier {
        let mut validation = signature_validation();
        validation.set_required_spec_claims(&["aud"]);
        validation.set_audience(&[audience]);
        GuestTokenVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The grant of a valid guest token as a digest over the canonical JSON of
    /// `user`, `resources` and `rls_rules`: equal grants give equal digests.
    pub fn verify(&self, token: &str) -> Result<[u8; 32], JwtError> {
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)?;
        check_times(&data.claims, now_secs())?;
        let c: GuestClaims =
            serde_json::from_value(data.claims).map_err(|_| JwtError::WrongType(String::new()))?;
        let kind = c.kind.unwrap_or_default();
        if kind != "guest" {
            return Err(JwtError::WrongType(kind));
        }
        // serde_json's map is ordered by key, so this rendering is canonical.
        let grant = serde_json::json!({
            "user": c.user,
            "resources": c.resources,
            "rls_rules": c.rls_rules,
        });
        let bytes = serde_json::to_vec(&grant).unwrap_or_default();
        let mut h = blake3::Hasher::new();
        h.update(b"chartcache-guest-grant-v1\0");
        h.update(&bytes);
        Ok(*h.finalize().as_bytes())
    }
}

/// The `exp` claim of a token **without** verifying it (integer or float, read
/// as [`numeric_date`]). Only for refusing cache hits to tokens that are past
/// their expiry, or have none: never for granting anything.
pub fn unverified_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_h, payload) = (parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    numeric_date(v.get("exp")?)
}

/// Whether a token's unverified `exp` (see [`unverified_exp`]) has passed or
/// is missing or unreadable.
pub fn unverified_expired(token: &str) -> bool {
    unverified_exp(token).is_none_or(|exp| exp <= now_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    pub fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn access(sub: serde_json::Value, exp: u64, kind: &str) -> serde_json::Value {
        serde_json::json!({"fresh": true, "iat": now() - 10, "nbf": now() - 10, "jti": "x",
            "type": kind, "sub": sub, "csrf": "y", "exp": exp})
    }

    #[test]
    fn access_token_checks() {
        let v = AccessTokenVerifier::new(b"k1");
        let good = sign(b"k1", &access("7".into(), now() + 900, "access"));
        assert_eq!(v.verify(&good).unwrap(), 7);
        let numeric = sign(b"k1", &access(7.into(), now() + 900, "access"));
        assert_eq!(v.verify(&numeric).unwrap(), 7);
        // Wrong key, expired, refresh token, not a JWT, alg=none.
        let forged = sign(b"k2", &access("1".into(), now() + 900, "access"));
        assert!(matches!(v.verify(&forged), Err(JwtError::Invalid(_))));
        let expired = sign(b"k1", &access("7".into(), now() - 1, "access"));
        assert!(matches!(v.verify(&expired), Err(JwtError::Expired)));
        let refresh = sign(b"k1", &access("7".into(), now() + 900, "refresh"));
        assert!(matches!(v.verify(&refresh), Err(JwtError::WrongType(_))));
        assert!(v.verify("not-a-jwt").is_err());
        assert!(v.verify("garbage.not.signed").is_err());
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&access("1".into(), now() + 900, "access").to_string())
        );
        assert!(v.verify(&none).is_err());
        // Tampered payload with the original signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = b64(&access("1".into(), now() + 900, "access").to_string());
        parts[1] = &evil;
        assert!(v.verify(&parts.join(".")).is_err());
    }

    fn guest(user: &str, rls: &str, aud: &str, exp: u64) -> serde_json::Value {
        serde_json::json!({"user": {"username": user}, "resources": [{"type": "dashboard", "id": "d1"}],
            "rls_rules": [{"clause": rls}], "iat": now(), "exp": exp, "aud": aud, "type": "guest"})
    }

    #[test]
    fn guest_token_grants() {
        let v = GuestTokenVerifier::new(b"g", "superset");
        let a1 = sign(
            b"g",
            &guest("embed", "region='north'", "superset", now() + 300),
        );
        let a2 = sign(
            b"g",
            &guest("embed", "region='north'", "superset", now() + 600),
        );
        let b = sign(
            b"g",
            &guest("embed", "region='south'", "superset", now() + 300),
        );
        // Same grant, different tokens: same scope. Other RLS: other scope.
        assert_eq!(v.verify(&a1).unwrap(), v.verify(&a2).unwrap());
        assert_ne!(v.verify(&a1).unwrap(), v.verify(&b).unwrap());
        let other_aud = sign(b"g", &guest("embed", "x", "elsewhere", now() + 300));
        assert!(v.verify(&other_aud).is_err());
        let expired = sign(b"g", &guest("embed", "x", "superset", now() - 1));
        assert!(v.verify(&expired).is_err());
        let forged = sign(b"h", &guest("embed", "x", "superset", now() + 300));
        assert!(v.verify(&forged).is_err());
        let mut access_like = guest("embed", "x", "superset", now() + 300);
        access_like["type"] = "access".into();
        assert!(matches!(
            v.verify(&sign(b"g", &access_like)),
            Err(JwtError::WrongType(_))
        ));
    }

    /// Superset's guest tokens carry `exp = time.time() + N`: a float.
    #[test]
    fn float_and_integer_time_claims() {
        let t = now() as f64;
        let g = GuestTokenVerifier::new(b"g", "superset");
        let guest_at = |exp: serde_json::Value, nbf: Option<serde_json::Value>| {
            let mut c = guest("embed", "x", "superset", 0);
            c["exp"] = exp;
            if let Some(n) = nbf {
                c["nbf"] = n;
            }
            g.verify(&sign(b"g", &c))
        };
        assert!(guest_at((t + 300.25).into(), None).is_ok());
        assert!(guest_at(((t as u64) + 300).into(), None).is_ok());
        assert!(matches!(
            guest_at((t - 1.5).into(), None),
            Err(JwtError::Expired)
        ));
        assert!(matches!(
            guest_at((t - 0.5).into(), None),
            Err(JwtError::Expired)
        ));
        assert!(matches!(
            guest_at((now() - 1).into(), None),
            Err(JwtError::Expired)
        ));
        // nbf, both forms.
        assert!(guest_at((t + 300.0).into(), Some((t - 10.5).into())).is_ok());
        assert!(guest_at((t + 300.0).into(), Some((now() - 10).into())).is_ok());
        assert!(matches!(
            guest_at((t + 300.0).into(), Some((t + 60.5).into())),
            Err(JwtError::NotYetValid)
        ));
        assert!(matches!(
            guest_at((t + 300.0).into(), Some((now() + 60).into())),
            Err(JwtError::NotYetValid)
        ));
        // Missing or unreadable exp.
        let mut c = guest("embed", "x", "superset", 0);
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(g.verify(&sign(b"g", &c)), Err(JwtError::NoExpiry)));
        assert!(matches!(
            guest_at("soon".into(), None),
            Err(JwtError::NoExpiry)
        ));
        // Access tokens read the same way.
        let v = AccessTokenVerifier::new(b"k1");
        let mut a = access("7".into(), 0, "access");
        a["exp"] = (t + 900.5).into();
        a["nbf"] = (t - 10.5).into();
        assert_eq!(v.verify(&sign(b"k1", &a)).unwrap(), 7);
        a["exp"] = (t - 1.5).into();
        assert!(v.verify(&sign(b"k1", &a)).is_err());
        // Unverified: float read like PyJWT, missing means expired.
        let unsigned = |c: serde_json::Value| sign(b"whatever", &c);
        assert_eq!(
            unverified_exp(&unsigned(serde_json::json!({"exp": 42.9}))),
            Some(42)
        );
        assert!(unverified_expired(&unsigned(
            serde_json::json!({"exp": t - 1.5})
        )));
        assert!(!unverified_expired(&unsigned(
            serde_json::json!({"exp": t + 60.5})
        )));
        assert!(unverified_expired(&unsigned(
            serde_json::json!({"user": "x"})
        )));
        assert!(unverified_expired("made-up"));
    }

    #[test]
    fn unverified_exp_reads_only_exp() {
        let t = sign(b"whatever", &serde_json::json!({"exp": 42}));
        assert_eq!(unverified_exp(&t), Some(42));
        assert_eq!(unverified_exp("not-a-jwt"), None);
        assert_eq!(unverified_exp("a.!!!.c"), None);
    }

    #[test]
    fn secrets_from_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "s3cret\n").unwrap();
        let got = load_secret(None, Some(f.to_str().unwrap())).unwrap();
        assert_eq!(got.as_deref(), Some(&b"s3cret"[..]));
        assert!(load_secret(Some("CHARTCACHE_TEST_SURELY_UNSET_VAR"), None).is_err());
        assert!(load_secret(None, None).unwrap().is_none());
        std::fs::write(&f, "\n").unwrap();
        assert!(load_secret(None, Some(f.to_str().unwrap())).is_err());
    }
}
