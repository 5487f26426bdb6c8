//! Superset faults: answers 500, answers too slowly, or is gone (connection
//! refused, open connections dropped). Every key the load asks for was stored
//! before the fault, and the tier allows serving it stale on error: the goal
//! is that no client sees the fault.

use std::path::Path;
use std::time::Duration;

use super::load::{self, AFTER, DURING, Load};
use super::proxy::{Chartcache, admin};
use super::upstream::{Fault, Upstream};
use super::{Report, Scale, sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpFault {
    Status500,
    /// Slower than `upstream_client.response_timeout_ms`.
    Slow,
    Killed,
}

/// Entries are fresh for 1 s, then served stale on error for 10 minutes;
/// Superset gets 800 ms to answer.
const TOML: &str = "default_tier = \"chaos\"\nrules = []\n\
[upstream_client]\nresponse_timeout_ms = 800\n\
[[tiers]]\nname = \"chaos\"\nfresh_secs = 1\nstale_while_revalidate_secs = 0\nstale_if_error_secs = 600\n";

pub async fn upstream_fault(bin: &Path, scale: &Scale, fault: UpFault) -> Report {
    let name = match fault {
        UpFault::Status500 => "upstream_500",
        UpFault::Slow => "upstream_slow",
        UpFault::Killed => "upstream_killed",
    };
    let mut up = Upstream::start().await;
    let cc = Chartcache::start(bin, &up.url(), TOML).await;
    let mut r = Report::new(name);
    // Store every key the load will ask for, for both users.
    let c = load::client();
    for key in 0..scale.keys {
        for user in 0..2 {
            let a = load::chart(&c, &cc.url(), user, key, Duration::from_secs(10)).await;
            r.add_answer(0, &a);
        }
    }
    let load = Load::start(scale.load(&[cc.url()]));
    // Long enough for the entries to stop being fresh.
    sleep(scale.before.max(Duration::from_millis(1100))).await;

    load.set_phase(DURING);
    match fault {
        UpFault::Status500 => up.set_fault(Fault::Status500),
        UpFault::Slow => up.set_delay(Duration::from_millis(2_000)),
        UpFault::Killed => up.kill(),
    }
    // Gone for longer than readiness remembers a good answer (10 s): /readyz
    // must keep the pod in the Service so the stale entries reach clients.
    let during = if fault == UpFault::Killed {
        scale.during.max(Duration::from_secs(11))
    } else {
        scale.during
    };
    sleep(during).await;
    let ready = admin(cc.admin_port, http::Method::GET, "/readyz", "").await;
    match fault {
        UpFault::Status500 => up.set_fault(Fault::None),
        UpFault::Slow => up.set_delay(Duration::ZERO),
        UpFault::Killed => up.revive().await,
    }
    load.set_phase(AFTER);
    sleep(scale.after).await;
    let samples = load.finish().await;
    r.add(&samples);
    let during_len = during;
    let during: Vec<_> = samples.iter().filter(|s| s.phase == DURING).collect();
    let stale = during
        .iter()
        .filter(|s| s.answer.cache_status.contains("fwd=stale"))
        .count();
    r.fact(
        "during: answered stale",
        format!("{stale} of {}", during.len()),
    );
    r.fact("fault lasted (ms)", during_len.as_millis());
    r.fact("/readyz at the end of the fault", format!("{ready:?}"));
    r.standard_goals(true);
    r.goal(
        "stale entries were served during the fault",
        stale > 0,
        stale,
    );
    r.goal(
        "/readyz stays 200 while Superset fails (readiness is about this process)",
        matches!(ready, Ok((200, _))),
        format!("{ready:?}"),
    );
    r.fact("chartcache_warnings", cc.warnings(3).join(" | "));
    r
}
