//! Superset's answers as the fake sends them: JSON with the headers a stock
//! Superset behind gunicorn sends (see the fixtures' `response.headers`).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::{Value, json};

/// Every response body of the fake.
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// JSON bytes with Superset's headers.
pub fn json_bytes(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header(header::SERVER, "gunicorn")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::VARY, "Accept-Encoding, Cookie")
        .header("x-frame-options", "SAMEORIGIN")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "strict-origin-when-cross-origin")
        .body(full(body))
        .expect("response")
}

/// A JSON value with Superset's headers.
pub fn json(status: u16, v: Value) -> Response<Body> {
    json_bytes(status, serde_json::to_vec(&v).expect("json"))
}

/// flask-jwt-extended's answer to a request without usable credentials.
pub fn unauthorized() -> Response<Body> {
    json(401, json!({"msg": "Missing Authorization Header"}))
}

/// Flask's 404.
pub fn not_found() -> Response<Body> {
    json(404, json!({"message": "Not found"}))
}

/// `GET /api/v1/me/` for a user (fields as in fixture 03).
pub fn me(id: u64, username: &str) -> Response<Body> {
    json(
        200,
        json!({"result": {"email": format!("{username}@example.com"), "first_name": username,
            "id": id, "is_active": true, "is_anonymous": false, "last_name": "Example",
            "username": username}}),
    )
}

/// `GET /api/v1/me/roles/`: each role with one permission, and the dataset.
pub fn me_roles(username: &str, roles: &[String]) -> Response<Body> {
    let roles: serde_json::Map<String, Value> = roles
        .iter()
        .map(|r| (r.clone(), json!([["can_read", "Chart"]])))
        .collect();
    json(
        200,
        json!({"result": {"username": username, "roles": roles,
            "permissions": {"datasource_access": ["[sales_db].[sales](id:1)"]}}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_has_superset_headers() {
        let r = me(2, "alice");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::VARY], "Accept-Encoding, Cookie");
        assert_eq!(r.headers()[header::SERVER], "gunicorn");
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["result"]["id"], 2);
        assert_eq!(v["result"]["username"], "alice");
    }
}
