//! A Superset-shaped upstream on loopback, shared by chartcache's integration
//! tests, benches and load tests, so they all talk to the same fake.
//!
//! It authenticates like Superset behind gunicorn ([`gunicorn`], [`users`]:
//! a valid session cookie wins over any Bearer token), answers
//! `/api/v1/me/` and `/api/v1/me/roles/`, and serves chart data ([`chart`])
//! whose answers name the user and count queries, or have a chosen size
//! ([`payload`]). Knobs on [`State`]: [`ChartMode`] (status, cookies,
//! no-store, hang, drop, large), delay, `cache_timeout`, filler, "down";
//! [`Superset::kill`] and [`Superset::revive`] on the same port; idle
//! keep-alive connections closed after 2 s as gunicorn does ([`Options`]).
//! Request bodies come from the captured fixtures ([`fixtures`]). With the
//! `gaq` feature, [`gaq`] adds Superset's GLOBAL_ASYNC_QUERIES mode (202
//! tickets per async channel, jobs, events, `result_url`).

pub mod chart;
pub mod fixtures;
#[cfg(feature = "gaq")]
pub mod gaq;
pub mod gunicorn;
pub mod payload;
pub mod reply;
pub mod server;
pub mod users;

pub use chart::{Answer, ChartMode};
pub use reply::Body;
pub use server::{Extra, GUNICORN_KEEPALIVE, Options, State, Superset};
pub use users::Users;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;

    async fn post(s: &Superset, token: &str, body: &str) -> (u16, serde_json::Value) {
        let c = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let req = http::Request::post(format!("{}/api/v1/chart/data", s.url()))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let r = c.request(req).await.unwrap();
        let status = r.status().as_u16();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn answers_name_the_user_and_count() {
        let s = Superset::start().await;
        let (st, v) = post(&s, "alice-token", r#"{"queries":[{"row_limit":5}]}"#).await;
        assert_eq!(st, 200);
        assert_eq!(v["result"][0]["user"], "alice");
        assert_eq!(v["result"][0]["row_limit"], 5);
        assert_eq!(post(&s, "nobody", "{}").await.0, 401);
        assert_eq!(post(&s, "bob-token", "{").await.0, 400);
        s.set_mode(ChartMode::Status(500));
        assert_eq!(post(&s, "bob-token", "{}").await.0, 500);
        assert_eq!(s.chart_queries(), 2);
    }

    #[tokio::test]
    async fn sized_answers_follow_row_limit() {
        let s = Superset::start_with(Options {
            answer: Answer::Sized,
            ..Options::default()
        })
        .await;
        let (_, v) = post(&s, "admin-token", r#"{"queries":[{"row_limit":4096}]}"#).await;
        let n = serde_json::to_vec(&v).unwrap().len();
        assert!((3800..4300).contains(&n), "{n}");
    }

    #[tokio::test]
    async fn killed_refuses_and_revives_on_the_same_port() {
        let mut s = Superset::start().await;
        s.kill();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
        s.revive().await;
        assert_eq!(post(&s, "alice-token", "{}").await.0, 200);
    }
}
