//! `chartcache-load`: load-testing tools for chartcache, loopback only.
//!
//! ```text
//! chartcache-load upstream   --listen 127.0.0.1:18088 [--latency-min-ms 50 --latency-max-ms 800]
//! chartcache-load dashboards --target http://127.0.0.1:8080 --upstream http://127.0.0.1:18088 [...]
//! chartcache-load stampede   --target http://127.0.0.1:8080 --upstream http://127.0.0.1:18088 --n 500
//! chartcache-load floor      --listen 127.0.0.1:18090 --bytes 1024   (no-work tokio + hyper server)
//! chartcache-load rate       --target http://127.0.0.1:8080 --body body.json --rps 20000   (open loop)
//! chartcache-load chaos      --bin ../target/release/chartcache [--scenarios all]   (fault injection)
//! chartcache-load failover   --bins a=PATH,b=PATH [--fault switch|kill]   (master change, A/B)
//! ```
//! See `loadtests/README.md` for every option.

mod args;
mod chaos;
mod client;
mod dashboards;
mod failover;
mod floor;
mod payload;
mod rate;
mod rng;
mod stampede;
mod upstream;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!(
            "usage: chartcache-load <upstream|dashboards|stampede|floor|rate|chaos|failover|payload> [--option value]..."
        );
        return std::process::ExitCode::from(2);
    };
    let res = args::Args::parse(rest).and_then(|a| match cmd.as_str() {
        "upstream" => upstream::run(&a),
        "dashboards" => dashboards::run(&a),
        "stampede" => stampede::run(&a),
        "floor" => floor::run(&a),
        "rate" => rate::run(&a),
        "chaos" => chaos::run(&a),
        "failover" => failover::run(&a),
        "payload" => {
            // Print a chart-data response of --bytes N (for wrk bodies and checks).
            let n: usize = a.get("bytes", 1024)?;
            a.finish()?;
            use std::io::Write;
            std::io::stdout()
                .write_all(&payload::superset_response(n))
                .map_err(|e| e.to_string())
        }
        other => Err(format!("unknown command {other:?}")),
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chartcache-load: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
