//! Local request coalescing: one upstream fetch per key per process.
//!
//! The first request for a key becomes the leader and holds a [`LeaderGuard`];
//! later ones become followers and wait (bounded) for the leader's response.
//! A leader that finishes publishes its response; a leader that is dropped
//! without publishing (client went away, panic, error) releases its followers,
//! who then race to become the next leader — so a failing leader never strands
//! them and a stampede never reaches Superset at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::key::CacheKey;

/// State of one in-flight fetch.
#[derive(Clone)]
enum Slot<T> {
    Pending,
    Done(T),
    Released,
}

/// Per-key leader election. `T` is what the leader shares (cheap to clone).
pub struct Coalescer<T> {
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Slot<T>>>>,
}

/// What `acquire` gave the caller.
pub enum Role<T: Clone + Send + Sync + 'static> {
    /// Fetch upstream, then call `publish` (or drop to release followers).
    Leader(LeaderGuard<T>),
    /// Another request fetched it: here is its response.
    Follower(T),
    /// Waited the full bound without a result: fetch yourself, uncoalesced.
    TimedOut,
}

impl<T: Clone + Send + Sync + 'static> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Become leader for `key`, or wait up to `wait` for the current leader.
    pub async fn acquire(self: &Arc<Self>, key: CacheKey, wait: Duration) -> Role<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut rx = {
                let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(Slot::Pending);
                        map.insert(key, rx);
                        return Role::Leader(LeaderGuard {
                            key,
                            tx: Some(tx),
                            owner: self.clone(),
                        });
                    }
                }
            };
            let res =
                tokio::time::timeout_at(deadline, rx.wait_for(|s| !matches!(s, Slot::Pending)))
                    .await;
            match res {
                Err(_) => return Role::TimedOut,
                Ok(Ok(slot)) => match &*slot {
                    Slot::Done(v) => return Role::Follower(v.clone()),
                    // Leader gave up: loop and try to become the next leader.
                    _ => continue,
                },
                // Sender dropped without a value: same as released.
                Ok(Err(_)) => continue,
            }
        }
    }

    /// Become leader for `key` only if no fetch of it is in flight. Background
    /// refreshes use this: when someone is already fetching the key there is
    /// nothing left to do, and waiting would only hold a task.
    pub fn try_lead(self: &Arc<Self>, key: CacheKey) -> Option<LeaderGuard<T>> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&key) {
            return None;
        }
        let (tx, rx) = watch::channel(Slot::Pending);
        map.insert(key, rx);
        Some(LeaderGuard {
            key,
            tx: Some(tx),
            owner: self.clone(),
        })
    }

    /// Keys with a leader in flight (metrics, tests).
    pub fn inflight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn finish(&self, key: &CacheKey) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// Held by the leader. Dropping it without `publish` releases the followers.
pub struct LeaderGuard<T: Clone + Send + Sync + 'static> {
    key: CacheKey,
    tx: Option<watch::Sender<Slot<T>>>,
    owner: Arc<Coalescer<T>>,
}

impl<T: Clone + Send + Sync + 'static> LeaderGuard<T> {
    /// Hand the response to every follower and end leadership.
    pub fn publish(mut self, value: T) {
        // Remove first so requests arriving after this point start a new fetch
        // or find the stored entry, rather than reading a finished slot.
        self.owner.finish(&self.key);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Slot::Done(value));
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Drop for LeaderGuard<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.owner.finish(&self.key);
            let _ = tx.send(Slot::Released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn k() -> CacheKey {
        CacheKey([7; 32])
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_many_followers() {
        let c: Arc<Coalescer<u32>> = Coalescer::new();
        let leaders = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let c = c.clone();
            let leaders = leaders.clone();
            tasks.push(tokio::spawn(async move {
                match c.acquire(k(), Duration::from_secs(10)).await {
                    Role::Leader(g) => {
                        leaders.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        g.publish(42);
                        42
                    }
                    Role::Follower(v) => v,
                    Role::TimedOut => panic!("timed out"),
                }
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(leaders.load(Ordering::SeqCst), 1);
        assert_eq!(c.inflight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_leader_hands_over_to_one_follower() {
        let c: Arc<Coalescer<u32>> = Coalescer::new();
        let Role::Leader(first) = c.acquire(k(), Duration::from_secs(1)).await else {
            panic!()
        };
        let c2 = c.clone();
        let f1 = tokio::spawn(async move {
            match c2.acquire(k(), Duration::from_secs(10)).await {
                Role::Leader(g) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    g.publish(7);
                    "leader"
                }
                Role::Follower(_) => "follower",
                Role::TimedOut => "timeout",
            }
        });
        let c3 = c.clone();
        let f2 = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            match c3.acquire(k(), Duration::from_secs(10)).await {
                Role::Leader(g) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    g.publish(7);
                    "leader"
                }
                Role::Follower(v) => {
                    assert_eq!(v, 7);
                    "follower"
                }
                Role::TimedOut => "timeout",
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first); // the leader dies without publishing
        let mut got = vec![f1.await.unwrap(), f2.await.unwrap()];
        got.sort();
        assert_eq!(got, vec!["follower", "leader"]);
    }

    #[tokio::test(start_paused = true)]
    async fn try_lead_only_when_idle_and_followers_get_its_value() {
        let c: Arc<Coalescer<u32>> = Coalescer::new();
        let g = c.try_lead(k()).expect("idle key");
        assert!(c.try_lead(k()).is_none());
        let c2 = c.clone();
        let f = tokio::spawn(async move {
            match c2.acquire(k(), Duration::from_secs(5)).await {
                Role::Follower(v) => v,
                _ => 0,
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        g.publish(9);
        assert_eq!(f.await.unwrap(), 9);
        assert!(c.try_lead(k()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn followers_wait_is_bounded() {
        let c: Arc<Coalescer<u32>> = Coalescer::new();
        let Role::Leader(_g) = c.acquire(k(), Duration::from_secs(1)).await else {
            panic!()
        };
        let start = tokio::time::Instant::now();
        assert!(matches!(
            c.acquire(k(), Duration::from_secs(5)).await,
            Role::TimedOut
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
