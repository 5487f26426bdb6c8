//! A small circuit breaker for a remote store.
//!
//! closed → open after `threshold` consecutive failures → after `cooldown`, one
//! half-open probe is let through: success closes, failure reopens. While open,
//! callers skip the store at once, so a dead Redis adds no wait to requests.
//! Time is `tokio::time::Instant` so tests can run on paused time.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`; if it never reports (its future was
    /// dropped), another probe is allowed after a further cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// Externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Consecutive-failure circuit breaker.
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    /// `chartcache_store_breaker_open{store}`: 1 unless closed.
    gauge: Option<IntGauge>,
}

impl Breaker {
    /// Open after `threshold` consecutive failures; probe after `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration, gauge: Option<IntGauge>) -> Breaker {
        if let Some(g) = &gauge {
            g.set(0);
        }
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            gauge,
        }
    }

    /// May the caller use the store now? `false` means skip it (fail open).
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { since: now };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { since } if now >= since + self.cooldown => {
                *s = State::HalfOpen { since: now };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// The operation succeeded.
    pub fn success(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*s, State::Closed { failures: 0 }) {
            if !matches!(*s, State::Closed { .. }) {
                tracing::info!("store circuit breaker closed");
            }
            *s = State::Closed { failures: 0 };
            self.set_gauge(0);
        }
    }

    /// The operation failed (error or timeout).
    pub fn failure(&self) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *s {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *s = State::Closed {
                    failures: failures + 1,
                };
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                if matches!(*s, State::Closed { .. }) {
                    tracing::warn!(
                        cooldown_ms = self.cooldown.as_millis() as u64,
                        "store circuit breaker opened; serving without it"
                    );
                }
                *s = State::Open {
                    until: now + self.cooldown,
                };
                self.set_gauge(1);
            }
            // Late reports from calls started before opening change nothing.
            State::Open { .. } => {}
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn set_gauge(&self, v: i64) {
        if let Some(g) = &self.gauge {
            g.set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, IntGauge) {
        let g = IntGauge::new("t", "t").unwrap();
        (Breaker::new(3, Duration::from_secs(1), Some(g.clone())), g)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let (b, g) = breaker();
        b.failure();
        b.failure();
        b.success(); // resets the count
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(g.get(), 1);
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_after_cooldown() {
        let (b, g) = breaker();
        for _ in 0..3 {
            b.failure();
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(g.get(), 0);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_probe_does_not_wedge_half_open() {
        let (b, _) = breaker();
        for _ in 0..3 {
            b.failure();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow()); // probe whose future is dropped, never reports
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.allow(), "a new probe after another cool-down");
    }
}
