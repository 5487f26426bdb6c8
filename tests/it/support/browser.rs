//! A browser of a Superset deployment with GLOBAL_ASYNC_QUERIES, as its front
//! end behaves: a login with its own async channel (`async-token` cookie), a
//! chart load that POSTs, and on `202` checks the ticket is its own, polls its
//! channel's events (gzip accepted) and fetches `result_url`.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};

use fake_superset::gaq;

use super::{Proxy, Resp, TestClient, Upstream, chart_body};

/// A browser login: its session and its own async channel.
#[derive(Clone)]
pub struct Browser {
    pub channel: String,
    pub cookie: String,
}

impl Browser {
    pub fn new(user_id: u64, user: &'static str, channel: &str) -> Browser {
        let cookie = format!(
            "session={user}-session; {}={}",
            gaq::COOKIE,
            gaq::token(channel, user_id)
        );
        Browser {
            channel: channel.to_string(),
            cookie,
        }
    }
}

/// What one chart load gave a browser.
#[derive(Debug)]
pub struct Load {
    /// The POST's answer.
    pub post: Resp,
    /// The data the chart shows (from the POST or from `result_url`).
    pub data: Value,
    /// The `result_url` fetched, if any, and its answer.
    pub result: Option<(String, Resp)>,
}

pub fn body(force: bool) -> Value {
    let mut b = chart_body("16-chart-data-bignumber-admin-miss.json");
    b["force"] = json!(force);
    b
}

pub async fn post(c: &TestClient, p: &str, b: &Browser, body: &Value) -> Resp {
    c.send(
        Method::POST,
        &format!("{p}/api/v1/chart/data"),
        &[
            ("cookie", b.cookie.as_str()),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

pub async fn get(c: &TestClient, p: &str, b: &Browser, path: &str) -> Resp {
    c.send(
        Method::GET,
        &format!("{p}{path}"),
        &[("cookie", b.cookie.as_str())],
        "",
    )
    .await
}

/// Load a chart as Superset's front end does: POST; on 202, check the ticket
/// is for this browser's channel, poll its events until the job is done
/// (bounded), then GET `result_url`.
pub async fn load(c: &TestClient, p: &str, b: &Browser, body: &Value) -> Result<Load, String> {
    let post = post(c, p, b, body).await;
    finish(c, p, b, post).await
}

/// The rest of a chart load, given the POST's answer.
pub async fn finish(c: &TestClient, p: &str, b: &Browser, post: Resp) -> Result<Load, String> {
    finish_via(c, &mut |_| p.to_string(), b, post).await
}

/// The requests of a chart load after its POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Poll,
    Result,
}

/// A chart load whose every request may reach another replica: request `n`
/// of the load (the POST is request 0) goes to `proxies[(first + n) % len]`,
/// as behind a Service without sticky sessions.
pub async fn load_via(
    c: &TestClient,
    proxies: &[String],
    first: usize,
    b: &Browser,
    body: &Value,
) -> Result<Load, String> {
    let post = post(c, &proxies[first % proxies.len()], b, body).await;
    let mut next = first + 1;
    let mut route = |_| {
        next += 1;
        proxies[(next - 1) % proxies.len()].clone()
    };
    finish_via(c, &mut route, b, post).await
}

/// [`finish`], each request after the POST sent to the proxy `route` names.
pub async fn finish_via(
    c: &TestClient,
    route: &mut (dyn FnMut(Step) -> String + Send),
    b: &Browser,
    post: Resp,
) -> Result<Load, String> {
    match post.status.as_u16() {
        200 => {
            let data = post.json();
            return Ok(Load {
                post,
                data,
                result: None,
            });
        }
        202 => {}
        s => return Err(format!("POST answered {s}")),
    }
    let url = poll_done(c, route, b, &post).await?;
    let r = get(c, &route(Step::Result), b, &url).await;
    if r.status != 200 {
        return Err(format!("result_url answered {}", r.status));
    }
    Ok(Load {
        post,
        data: r.json(),
        result: Some((url, r)),
    })
}

/// Poll `p` for the `done` event of the job of `ticket` (a `202` answer of
/// this browser's POST); its `result_url`.
pub async fn poll_until_done(
    c: &TestClient,
    p: &str,
    b: &Browser,
    ticket: &Resp,
) -> Result<String, String> {
    poll_done(c, &mut |_| p.to_string(), b, ticket).await
}

async fn poll_done(
    c: &TestClient,
    route: &mut (dyn FnMut(Step) -> String + Send),
    b: &Browser,
    post: &Resp,
) -> Result<String, String> {
    let ticket = post.json();
    if ticket["channel_id"] != json!(b.channel) {
        return Err(format!(
            "ticket of channel {} handed to channel {}",
            ticket["channel_id"], b.channel
        ));
    }
    let job = ticket["job_id"].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::from("0-0");
    let url = loop {
        if Instant::now() > deadline {
            return Err(format!("no event for job {job} on channel {}", b.channel));
        }
        // Browsers accept gzip, and Superset compresses the poll answers.
        let r = c
            .send(
                Method::GET,
                &format!("{}/api/v1/async_event/?last_id={last}", route(Step::Poll)),
                &[("cookie", b.cookie.as_str()), ("accept-encoding", "gzip")],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "async_event passes through");
        assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
        let events = serde_json::from_slice::<Value>(&r.decoded()).unwrap()["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(e) = events.last() {
            last = e["id"].as_str().unwrap().to_string();
        }
        if let Some(done) = events.iter().find(|e| e["job_id"] == job) {
            break done["result_url"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(url)
}

/// Put the upstream in GAQ mode, with jobs that run `job`.
pub fn gaq_upstream(up: &Upstream, job: Duration) {
    up.state.gaq.enable(job);
}

pub fn user_of(data: &Value) -> &str {
    data["result"][0]["user"].as_str().unwrap_or("?")
}

pub fn generation(data: &Value) -> u64 {
    data["result"][0]["generation"].as_u64().unwrap()
}

/// `n` browsers of alice, each on its own channel, load the chart at once.
pub async fn stampede(c: &TestClient, proxies: &[&Proxy], n: usize) -> Vec<Result<Load, String>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, b) = (c.clone(), Browser::new(2, "alice", &format!("ch-{i:02}")));
        let p = proxies[i % proxies.len()].url("");
        tasks.push(tokio::spawn(
            async move { load(&c, &p, &b, &body(false)).await },
        ));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
