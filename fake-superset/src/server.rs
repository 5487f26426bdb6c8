//! The fake served over real TCP on loopback: its observable [`State`], the
//! [`Superset`] handle (start, counters, knobs, kill and revive on the same
//! port), and the accept loop, which can close idle keep-alive connections
//! after 2 s as gunicorn does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::chart::{self, Answer, ChartMode};
use crate::reply::{self, Body};
use crate::users::{self, User, Users};

/// gunicorn's default `--keep-alive`: idle connections are closed after 2 s.
pub const GUNICORN_KEEPALIVE: Duration = Duration::from_secs(2);

/// A request as recorded: (method, path, headers, body).
pub type Seen = (String, String, HeaderMap, Bytes);

/// Shared, observable state of the fake; every knob can change while it runs.
pub struct State {
    /// Bearer token → (user id, username).
    pub bearers: Mutex<HashMap<String, User>>,
    /// Session cookie value → (user id, username).
    pub sessions: Mutex<HashMap<String, User>>,
    /// User id → role names, for `/api/v1/me/roles/`.
    pub roles: Mutex<HashMap<u64, Vec<String>>>,
    /// Guest token (`X-GuestToken`) → name the chart data is answered for.
    pub guests: Mutex<HashMap<String, String>>,
    /// Chart-data queries answered (counted once authenticated and parsed).
    pub chart_queries: AtomicUsize,
    /// `/api/v1/me/` requests.
    pub me_queries: AtomicUsize,
    /// `/api/v1/me/roles/` requests.
    pub roles_queries: AtomicUsize,
    /// Chart queries per username.
    pub per_user: Mutex<HashMap<String, usize>>,
    /// Added to every chart-data answer.
    pub delay_ms: AtomicU64,
    /// What chart-data requests get back.
    pub mode: Mutex<ChartMode>,
    /// `cache_timeout` put into [`Answer::Named`] results.
    pub cache_timeout: AtomicU64,
    /// Filler bytes in each [`Answer::Named`] result (0: none).
    pub filler: AtomicUsize,
    /// The shape of chart-data answers.
    pub answer: Answer,
    /// Requests seen (with [`Options::record`]); callers' own routes record
    /// theirs (or not) themselves.
    pub seen: Mutex<Vec<Seen>>,
    /// Whether Superset's routes push to [`State::seen`].
    pub record: bool,
    /// Superset is down: every request, `/api/v1/me/` included, gets a 503.
    pub down: AtomicBool,
    /// GLOBAL_ASYNC_QUERIES mode (off until [`crate::gaq::Gaq::enable`]).
    #[cfg(feature = "gaq")]
    pub gaq: Arc<crate::gaq::Gaq>,
}

impl State {
    fn new(users: Users, answer: Answer, record: bool) -> State {
        State {
            bearers: Mutex::new(users.bearers),
            sessions: Mutex::new(users.sessions),
            roles: Mutex::new(users.roles),
            guests: Mutex::new(users.guests),
            chart_queries: AtomicUsize::new(0),
            me_queries: AtomicUsize::new(0),
            roles_queries: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            mode: Mutex::new(ChartMode::Ok),
            cache_timeout: AtomicU64::new(86_400),
            filler: AtomicUsize::new(0),
            answer,
            seen: Mutex::new(Vec::new()),
            record,
            down: AtomicBool::new(false),
            #[cfg(feature = "gaq")]
            gaq: Arc::default(),
        }
    }

    /// Who the request is, by Superset's rules ([`users::authenticate`]).
    pub fn authenticate(&self, h: &HeaderMap) -> Option<User> {
        users::authenticate(
            &self.bearers.lock().unwrap(),
            &self.sessions.lock().unwrap(),
            &self.guests.lock().unwrap(),
            h,
        )
    }
}

/// A boxed future of a response.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Routes a caller adds in front of Superset's: `Ok` answers the request,
/// `Err` hands it back to be served as Superset would.
pub type Extra =
    fn(Arc<State>, Request<Incoming>) -> BoxFuture<Result<Response<Body>, Request<Incoming>>>;

/// How the fake is started.
#[derive(Clone)]
pub struct Options {
    /// The credentials accepted at start ([`Users::standard`] by default).
    pub users: Users,
    /// The shape of chart-data answers ([`Answer::Named`] by default).
    pub answer: Answer,
    /// Close keep-alive connections idle this long ([`GUNICORN_KEEPALIVE`]);
    /// `None` keeps them open (and serves HTTP/2 and upgrades too).
    pub keepalive_idle: Option<Duration>,
    /// The caller's own routes, tried before Superset's.
    pub extra: Option<Extra>,
    /// Keep every request in [`State::seen`] (on by default; off for long
    /// load runs, whose request count has no bound).
    pub record: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            users: Users::standard(),
            answer: Answer::Named,
            keepalive_idle: None,
            extra: None,
            record: true,
        }
    }
}

/// A running fake Superset on loopback, stopped on drop.
pub struct Superset {
    /// Where it listens (the same after [`Superset::revive`]).
    pub addr: SocketAddr,
    /// Its counters and knobs.
    pub state: Arc<State>,
    opts: Options,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Superset {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Superset {
    /// Start on a free loopback port with the [`users::STANDARD`] users:
    /// Bearer tokens `admin-token`, `alice-token`, `bob-token`, `carol-token`,
    /// sessions `admin-session` and so on.
    pub async fn start() -> Superset {
        Self::start_with(Options::default()).await
    }

    /// Start on a free loopback port.
    pub async fn start_with(opts: Options) -> Superset {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, opts)
    }

    /// Start on an existing listener (restart tests).
    pub fn start_on(listener: TcpListener, opts: Options) -> Superset {
        let state = Arc::new(State::new(opts.users.clone(), opts.answer, opts.record));
        let mut s = Superset {
            addr: listener.local_addr().unwrap(),
            state,
            opts,
            accept: None,
            conns: Arc::default(),
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: TcpListener) {
        let (st, extra) = (self.state.clone(), self.opts.extra);
        let handler = move |req| handle(st.clone(), extra, req);
        self.accept = Some(spawn_accept(
            listener,
            handler,
            self.opts.keepalive_idle,
            self.conns.clone(),
        ));
    }

    /// Keep serving for the rest of the process, without a handle.
    pub fn detach(self) -> SocketAddr {
        let addr = self.addr;
        std::mem::forget(self);
        addr
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Chart-data queries answered so far.
    pub fn chart_queries(&self) -> usize {
        self.state.chart_queries.load(Ordering::SeqCst)
    }

    /// `/api/v1/me/` requests so far.
    pub fn me_queries(&self) -> usize {
        self.state.me_queries.load(Ordering::SeqCst)
    }

    /// `/api/v1/me/roles/` requests so far.
    pub fn roles_queries(&self) -> usize {
        self.state.roles_queries.load(Ordering::SeqCst)
    }

    /// What chart-data requests get from now on.
    pub fn set_mode(&self, m: ChartMode) {
        *self.state.mode.lock().unwrap() = m;
    }

    /// Delay every chart-data answer by `d` from now on.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Filler bytes in each named chart-data answer.
    pub fn set_filler(&self, bytes: usize) {
        self.state.filler.store(bytes, Ordering::SeqCst);
    }

    /// Revoke a bearer token (Superset would now answer 401).
    pub fn revoke_bearer(&self, token: &str) {
        self.state.bearers.lock().unwrap().remove(token);
    }

    /// Accept `token` in `X-GuestToken`, answering chart data as `name`.
    pub fn allow_guest(&self, token: &str, name: &str) {
        self.state
            .guests
            .lock()
            .unwrap()
            .insert(token.to_string(), name.to_string());
    }

    /// The last request seen on `path`.
    pub fn last_seen(&self, path: &str) -> Option<Seen> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.1 == path)
            .cloned()
    }

    /// As if the process died: the port refuses connections and every open
    /// connection is dropped.
    pub fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Serve again on the same port (bounded retries while it lingers).
    pub async fn revive(&mut self) {
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not rebind the fake Superset on {}", self.addr);
    }
}

/// Superset's routes: `/health`, `/api/v1/me/`, `/api/v1/me/roles/`, the
/// GAQ routes when that mode is on, chart data, and 200 for any PUT/DELETE
/// (dataset and chart edits).
async fn handle(st: Arc<State>, extra: Option<Extra>, req: Request<Incoming>) -> Response<Body> {
    if st.down.load(Ordering::SeqCst) {
        return reply::json(503, json!({"message": "Service Unavailable"}));
    }
    let req = match extra {
        Some(f) => match f(st.clone(), req).await {
            Ok(r) => return r,
            Err(req) => req,
        },
        None => req,
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    #[cfg(feature = "gaq")]
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if st.record {
        st.seen.lock().unwrap().push((
            method.to_string(),
            path.clone(),
            headers.clone(),
            body.clone(),
        ));
    }
    match path.as_str() {
        "/health" => return reply::json(200, json!({"ok": true})),
        "/api/v1/me/" => {
            st.me_queries.fetch_add(1, Ordering::SeqCst);
            return match st.authenticate(&headers) {
                // Guests (id 0) are not users: /me refuses them.
                Some((id, name)) if id > 0 => reply::me(id, &name),
                _ => reply::unauthorized(),
            };
        }
        "/api/v1/me/roles/" => {
            st.roles_queries.fetch_add(1, Ordering::SeqCst);
            return match st.authenticate(&headers) {
                Some((id, name)) if id > 0 => {
                    let roles = st.roles.lock().unwrap().get(&id).cloned();
                    reply::me_roles(&name, &roles.unwrap_or_default())
                }
                _ => reply::unauthorized(),
            };
        }
        _ => {}
    }
    #[cfg(feature = "gaq")]
    if let Some(r) = crate::gaq::route(&st, &method, &path, query.as_deref(), &headers, &body) {
        return r;
    }
    if chart::is_chart(&method, &path) {
        return match st.authenticate(&headers) {
            Some((_, user)) => chart::answer(&st, &user, &method, &body).await,
            None => reply::unauthorized(),
        };
    }
    if method == http::Method::PUT || method == http::Method::DELETE {
        return reply::json(200, json!({"id": 1, "result": {}}));
    }
    reply::not_found()
}

/// Accept connections on `listener` until aborted, serving each with
/// `handler` in its own task (whose abort handle goes into `conns`). With
/// `keepalive_idle`, an HTTP/1 connection idle that long is closed, as
/// gunicorn does; without, connections may also speak HTTP/2 and upgrade.
pub fn spawn_accept<H, F>(
    listener: TcpListener,
    handler: H,
    keepalive_idle: Option<Duration>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let task = match keepalive_idle {
                Some(idle) => tokio::spawn(serve_closing_idle(stream, handler.clone(), idle)),
                None => tokio::spawn(serve_open(stream, handler.clone())),
            };
            let mut c = conns.lock().unwrap();
            c.retain(|h| !h.is_finished());
            c.push(task.abort_handle());
        }
    })
}

async fn serve_open<H, F>(stream: tokio::net::TcpStream, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let f = handler(req);
        async move { Ok::<_, Infallible>(f.await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}

/// Serve one HTTP/1 connection, closing it once idle for `idle`.
async fn serve_closing_idle<H, F>(stream: tokio::net::TcpStream, handler: H, idle: Duration)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let busy = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(Instant::now()));
    let (b, l) = (busy.clone(), last.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (b, l) = (b.clone(), l.clone());
        b.fetch_add(1, Ordering::SeqCst);
        let f = handler(req);
        async move {
            let r = f.await;
            *l.lock().unwrap() = Instant::now();
            b.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(r)
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)), if !closing => {
                let quiet = last.lock().unwrap().elapsed();
                if busy.load(Ordering::SeqCst) == 0 && quiet >= idle {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
