//! The Superset-shaped upstream of the chaos scenarios: the shared fake
//! (`fake_superset`) with users `alice` and `bob` (Bearer `alice-token`,
//! `bob-token`) among its users, every chart-data answer naming its user and
//! carrying ~200 bytes of filler, and idle keep-alive connections closed after
//! 2 s as gunicorn does. Faults: 500 answers, slow answers, and "killed"
//! (listener closed, every open connection dropped), then revived on the
//! same port.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use fake_superset::{ChartMode, GUNICORN_KEEPALIVE, Options, Superset};

/// What chart-data requests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500 with Superset's JSON error body.
    Status500,
}

/// A running upstream; `kill` and `revive` come from [`Superset`].
pub struct Upstream(Superset);

impl Deref for Upstream {
    type Target = Superset;
    fn deref(&self) -> &Superset {
        &self.0
    }
}

impl DerefMut for Upstream {
    fn deref_mut(&mut self) -> &mut Superset {
        &mut self.0
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let s = Superset::start_with(Options {
            keepalive_idle: Some(GUNICORN_KEEPALIVE),
            // Long runs send requests without bound; nothing reads them back.
            record: false,
            ..Options::default()
        })
        .await;
        s.set_filler(200);
        Upstream(s)
    }

    pub fn set_fault(&self, f: Fault) {
        self.0.set_mode(match f {
            Fault::None => ChartMode::Ok,
            Fault::Status500 => ChartMode::Status(500),
        });
    }

    pub fn set_delay(&self, d: Duration) {
        self.0.set_delay(d);
    }

    /// Filler bytes per chart-data answer (makes answers `size` bytes or so).
    pub fn set_size(&self, bytes: usize) {
        self.0.set_filler(bytes);
    }

    pub fn chart_queries(&self) -> u64 {
        self.0.chart_queries() as u64
    }
}
