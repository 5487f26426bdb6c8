//! The `chartcache` binary: serve (default), `check-config`, `explain`, `healthcheck`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use chartcache::app::App;
use chartcache::clock::SystemClock;
use chartcache::config::{Config, RuntimeFlavor};

/// mimalloc instead of the system allocator (feature `mimalloc`, on by
/// default): the hit path allocates small, short-lived buffers on every request
/// (headers, futures, `Bytes` handles) and served 2–8 % more hits with it; under the
/// miss-heavy soak glibc's RSS kept creeping up while mimalloc's stayed flat,
/// if higher. BENCHMARKS.md has the numbers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chartcache",
    version,
    about = "A caching reverse proxy for Apache Superset"
)]
struct Cli {
    /// Config file (TOML). Env: CHARTCACHE_CONFIG.
    #[arg(long, global = true, env = "CHARTCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Superset base URL, e.g. http://127.0.0.1:8088.
    #[arg(long, global = true)]
    upstream: Option<String>,
    /// Proxy listen address [default: 0.0.0.0:8080].
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, global = true)]
    admin_listen: Option<std::net::SocketAddr>,
    /// Memory store size in bytes [default: 268435456].
    #[arg(long, global = true)]
    memory_max_bytes: Option<u64>,
    /// Shared Redis cache, e.g. redis://:PASSWORD@redis:6379/0 (tiered behind
    /// the memory store unless `redis.tiered = false`), or
    /// redis+cluster://host:port,host:port for Redis Cluster. Sentinel mode is
    /// set in the `[redis]` config section.
    #[arg(
        long,
        global = true,
        env = "CHARTCACHE_REDIS_URL",
        hide_env_values = true
    )]
    redis_url: Option<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Run the proxy (the default).
    Serve,
    /// Load and validate the configuration, print it, and exit.
    CheckConfig,
    /// Probe the admin listener over loopback; exit 0 when it answers 2xx, else 1.
    /// For exec probes in images without a shell.
    Healthcheck {
        /// `/readyz` (ready for traffic) or `/healthz` (alive).
        #[arg(long, default_value = "/readyz", value_parser = ["/readyz", "/healthz"])]
        path: String,
        /// Give up after this long (milliseconds).
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Show canonical form, key, tags and tier for a request body read from stdin.
    Explain {
        /// Request path (and query), e.g. /api/v1/chart/data.
        #[arg(long, default_value = "/api/v1/chart/data")]
        path: String,
        /// HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// Identity scope to key with, e.g. user:2.
        #[arg(long, default_value = "user:?")]
        scope: String,
        /// Request Content-Type.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Credential kind the request carries: user, guest or anonymous.
        #[arg(long, default_value = "user", value_parser = ["user", "guest", "anonymous"])]
        identity: String,
    },
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(u) = &cli.upstream {
        cfg.upstream = u.clone();
    }
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(l) = cli.admin_listen {
        cfg.admin_listen = l;
    }
    if let Some(m) = cli.memory_max_bytes {
        cfg.memory.max_bytes = m;
    }
    if let Some(u) = &cli.redis_url {
        cfg.redis.url = Some(u.clone());
        cfg.redis.sentinels.clear();
        cfg.redis.cluster_nodes.clear();
    }
    Ok(cfg)
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHARTCACHE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // Colour only for a person at a terminal: escape codes in a log collector's
    // lines are noise and break searches.
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Healthcheck { path, timeout_ms }) = &cli.cmd {
        return healthcheck(&cli, path, *timeout_ms);
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chartcache: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Exit 0 when the admin listener answers `path` with 2xx; 1 for anything else,
/// an unreadable config included (a probe knows only success and failure).
fn healthcheck(cli: &Cli, path: &str, timeout_ms: u64) -> std::process::ExitCode {
    let res = load(cli).and_then(|cfg| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(chartcache::healthcheck::check(
                &cfg,
                path,
                std::time::Duration::from_millis(timeout_ms),
            ))
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chartcache healthcheck: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load(&cli)?;
    match &cli.cmd {
        Some(Cmd::CheckConfig) => {
            cfg.validate()?;
            // Tiers and rules are checked where they are compiled.
            chartcache::policy::Policy::from_config(&cfg)?;
            println!("{}", toml_string(&cfg)?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Some(Cmd::Explain {
            path,
            method,
            scope,
            content_type,
            identity,
        }) => {
            let policy = chartcache::policy::Policy::from_config(&Config {
                upstream: if cfg.upstream.is_empty() {
                    "http://unused".into()
                } else {
                    cfg.upstream.clone()
                },
                ..cfg.clone()
            })?;
            let mut body = Vec::new();
            if method != "GET" {
                std::io::stdin().read_to_end(&mut body)?;
            }
            let m: http::Method = method.parse()?;
            use chartcache::clock::Clock;
            let v = chartcache::explain::explain(
                &cfg,
                &policy,
                &m,
                path,
                Some(content_type),
                &body,
                scope,
                match identity.as_str() {
                    "guest" => chartcache::config::IdentityKind::Guest,
                    "anonymous" => chartcache::config::IdentityKind::Anonymous,
                    _ => chartcache::config::IdentityKind::User,
                },
                SystemClock.now_ms(),
            );
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Some(Cmd::Healthcheck { .. }) => unreachable!("handled in main"),
        None | Some(Cmd::Serve) => serve(cfg, &cli),
    }
}

/// Opt this process out of transparent huge pages (`server.transparent_huge_pages`).
/// mimalloc asks for them on its arenas (`MADV_HUGEPAGE`), and the kernel then
/// zeroes 2 MiB at the first touch of each: tens of ms of a cold process's
/// first burst went there. The flag is checked at fault time, so it covers the
/// memory already reserved before `main`.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
        }
    }
}

fn toml_string(cfg: &Config) -> anyhow::Result<String> {
    // figment re-serialises through serde_json: print the effective config as JSON.
    Ok(serde_json::to_string_pretty(cfg)?)
}

fn serve(cfg: Config, cli: &Cli) -> anyhow::Result<()> {
    init_logging(&cfg);
    cfg.validate()?;
    if !cfg.server.transparent_huge_pages {
        disable_transparent_huge_pages();
    }
    let per_core = cfg.server.runtime == RuntimeFlavor::PerCore;
    let workers = cfg.server.workers();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // Per core, this runtime starts up and then runs the accept loop, the admin
    // listener, signals and background tasks: connections have threads of their own.
    rt.worker_threads(if per_core { 1 } else { workers });
    let rt = rt.enable_all().build()?;
    if per_core {
        // Before the store opens Redis connections: it keeps a set per thread.
        chartcache::worker::expect(workers);
    }
    rt.block_on(async move {
        let token = cfg.admin.resolve_token()?.map(Arc::<str>::from);
        if token.is_none() {
            tracing::warn!(
                "no admin token (admin.token_file or CHARTCACHE_ADMIN__TOKEN): /purge and /explain are disabled"
            );
        }
        let listen = cfg.listen;
        let admin_listen = cfg.admin_listen;
        let clock: chartcache::clock::SharedClock = Arc::new(SystemClock);
        let metrics = Arc::new(chartcache::metrics::Metrics::new());
        // Redis trouble is logged here and does not stop startup (see store::setup).
        let built = chartcache::store::setup::build(&cfg, metrics.clone(), clock.clone()).await?;
        let app = App::new(cfg, built.store, built.memory, metrics, clock)?;
        let listener = chartcache::server::bind(listen, "proxy").await?;
        let admin = chartcache::server::bind(admin_listen, "admin").await?;
        tracing::info!(%listen, %admin_listen, upstream = %app.config.load().upstream, store = app.store.name(), "chartcache listening");
        let shutdown = CancellationToken::new();
        // The admin listener outlives the drain so /readyz can report 503 meanwhile.
        let admin_shutdown = CancellationToken::new();
        tokio::spawn(chartcache::server::serve_admin(app.clone(), admin, token, admin_shutdown.clone()));
        spawn_reloader(app.clone(), cli);
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            signals.cancel();
        });
        if per_core {
            chartcache::server::serve_per_core(app, listener, workers, shutdown).await?;
        } else {
            chartcache::server::serve(app, listener, shutdown).await;
        }
        admin_shutdown.cancel();
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGHUP: re-read the config file, env and flags; keep the old config if the
/// new one is invalid.
fn spawn_reloader(app: Arc<App>, cli: &Cli) {
    use tokio::signal::unix::{SignalKind, signal};
    let cli = Cli {
        cmd: None,
        ..cli.clone()
    };
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let reloaded = load(&cli).and_then(|cfg| app.reload(cfg));
            app.metrics.config_reloaded(reloaded.is_ok());
            match reloaded {
                Ok(restart) if restart.is_empty() => tracing::info!("configuration reloaded"),
                Ok(restart) => tracing::warn!(
                    ?restart,
                    "configuration reloaded; these settings need a restart to change"
                ),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "configuration reload failed; keeping the previous one")
                }
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
