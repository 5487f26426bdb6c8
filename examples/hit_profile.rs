//! One in-process hit, counted: `proxy::handle` with the memory store on a
//! current-thread runtime, after a miss and a few warm-up hits.
//!
//!   cargo run --release --example hit_profile -- sites [AE]
//!       prints every allocation one hit makes, with its callers;
//!   valgrind --tool=callgrind target/release/examples/hit_profile count N [AE]
//!       runs N hits: the instruction count of N = 2000 minus that of N = 0,
//!       divided by 2000, is the instructions per hit (deterministic, unlike
//!       time on a shared VM; BENCHMARKS.md).
//!
//! AE is the client's Accept-Encoding ("" or absent for none). Unlike
//! production, this uses the system allocator (so counts include malloc) and
//! no tower layers or hyper.
#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use chartcache::app::App;
use chartcache::body::full;
use chartcache::clock::SystemClock;
use chartcache::config::Config;
use chartcache::proxy::{self, ConnInfo};
use http::{Request, header};
use http_body_util::BodyExt;

struct A;
thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static IN: Cell<bool> = const { Cell::new(false) };
}
static SITES: Mutex<Vec<String>> = Mutex::new(Vec::new());

unsafe impl GlobalAlloc for A {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.with(|o| o.get()) && !IN.with(|i| i.replace(true)) {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            let frames: Vec<&str> = bt
                .lines()
                .filter(|s| {
                    s.trim_start()
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit())
                })
                .filter(|s| {
                    !s.contains("alloc::")
                        && !s.contains("std::backtrace")
                        && !s.contains("hit_profile::A")
                        && !s.contains("__rust")
                        && !s.contains("core::")
                })
                .take(4)
                .collect();
            SITES
                .lock()
                .unwrap()
                .push(format!("{} B: {}", l.size(), frames.join(" <- ")));
            IN.with(|i| i.set(false));
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static G: A = A;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = common::start_upstream().await;
        let cfg = Config {
            upstream: format!("http://{addr}"),
            ..Config::default()
        };
        let app = App::with_memory_store(cfg, Arc::new(SystemClock)).unwrap();
        let body = Bytes::from(common::fixture_request_body(
            "20-chart-data-timeseries-admin-miss.json",
        ));
        let conn = ConnInfo {
            remote: Some("127.0.0.1:40000".parse().unwrap()),
            proto: "http",
        };
        let req = |ae: Option<&'static str>| {
            let mut b = Request::post("/api/v1/chart/data")
                .header(header::HOST, "superset.local")
                .header(header::AUTHORIZATION, "Bearer bench-admin-token")
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", "0123456789abcdef0123456789abcdef");
            if let Some(ae) = ae {
                b = b.header(header::ACCEPT_ENCODING, ae);
            }
            b.body(full(body.clone())).unwrap()
        };
        let args: Vec<String> = std::env::args().collect();
        let mode = args.get(1).map(String::as_str).unwrap_or("sites");
        let n: usize = if mode == "count" {
            args.get(2).and_then(|s| s.parse().ok()).expect("count N")
        } else {
            0
        };
        let ae = args
            .get(if mode == "count" { 3 } else { 2 })
            .cloned()
            .filter(|s| !s.is_empty());
        let ae: Option<&'static str> = ae.map(|s| &*Box::leak(s.into_boxed_str()));
        for _ in 0..5 {
            let r = proxy::handle(app.clone(), req(ae), conn).await;
            let _ = r.into_body().collect().await.unwrap();
        }
        if mode == "count" {
            for _ in 0..n {
                let r = proxy::handle(app.clone(), req(ae), conn).await;
                let _ = r.into_body().collect().await.unwrap();
            }
            return;
        }
        let f = proxy::handle(app.clone(), req(ae), conn);
        println!("proxy::handle future: {} bytes", std::mem::size_of_val(&f));
        drop(f);
        let r0 = req(ae);
        ON.with(|o| o.set(true));
        let r = proxy::handle(app.clone(), r0, conn).await;
        let cs = r.headers().get("cache-status").cloned();
        let _ = r.into_body().collect().await.unwrap();
        ON.with(|o| o.set(false));
        let sites = SITES.lock().unwrap().clone();
        println!("{:?}: {} allocations", cs, sites.len());
        for s in sites {
            println!("{s}");
        }
    });
}
