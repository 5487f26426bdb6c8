//! `chartcache-load chaos`: the fault-injection suite at long scale against a
//! chartcache binary (the release build by default). The scenarios are the
//! ones `cargo test --test chaos` runs quickly (`tests/chaos/chaos_*.rs`); they
//! live in `tests/chaos/support/` and are compiled into this tool unchanged.
//!
//! ```text
//! chartcache-load chaos [--bin ../target/release/chartcache] [--scenarios all|a,b]
//!                       [--scale long|quick] [--json FILE]
//! ```
//! Prints each scenario's report (and a `CHAOS_JSON` line), appends the JSON
//! to `--json`, and exits non-zero if any goal failed.

#[path = "../../tests/chaos/support/mod.rs"]
pub(crate) mod chaos_support;

use std::io::Write;

use crate::args::Args;

pub fn run(args: &Args) -> Result<(), String> {
    let bin = std::path::PathBuf::from(args.string("bin", "../target/release/chartcache"));
    let which = args.string("scenarios", "all");
    let scale = match args.string("scale", "long").as_str() {
        "long" => chaos_support::Scale::long(),
        "quick" => chaos_support::Scale::quick(),
        other => return Err(format!("--scale: long or quick, not {other:?}")),
    };
    let json = args.opt("json");
    args.finish()?;
    if !bin.exists() {
        return Err(format!(
            "{}: no such binary (cargo build --release first)",
            bin.display()
        ));
    }
    let names: Vec<String> = if which == "all" {
        chaos_support::SCENARIOS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        which.split(',').map(|s| s.trim().to_string()).collect()
    };
    for n in &names {
        if !chaos_support::SCENARIOS.contains(&n.as_str()) {
            return Err(format!(
                "unknown scenario {n:?}; known: {:?}",
                chaos_support::SCENARIOS
            ));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for name in &names {
        eprintln!("-- {name} ({} scale)", scale.name);
        let (bin, scale, n) = (bin.clone(), scale.clone(), name.clone());
        // A scenario that panics (a process that would not start) fails alone.
        let res = rt.block_on(async move {
            tokio::spawn(async move { chaos_support::run(&n, &bin, &scale).await }).await
        });
        match res {
            Ok(Some(r)) => {
                print!("{}", r.render());
                if let Some(path) = &json {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("{path}: {e}"))?;
                    writeln!(f, "{}", r.json()).map_err(|e| e.to_string())?;
                }
                if !r.passed() {
                    failed.push(name.clone());
                }
            }
            Ok(None) => unreachable!("checked above"),
            Err(e) => {
                println!("== {name}: did not complete: {e}");
                failed.push(name.clone());
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "chaos: {} scenarios, {} with goals not met {:?}",
        names.len(),
        failed.len(),
        failed
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("goals not met in {failed:?}"))
    }
}
