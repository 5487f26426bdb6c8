//! The replica's subscriptions (`{prefix}:inv`, `{prefix}:rel`): one pub/sub
//! connection to the current master, one reconnect loop.
//!
//! Redis Cluster: classic `PUBLISH` is broadcast over the cluster bus to every
//! node, replicas included, so one plain subscription to any one node hears
//! every replica's messages. Sharded pub/sub (`SSUBSCRIBE`) would confine a
//! channel to its slot's shard and need following that slot's master through
//! failovers and reshards; our two channels carry little traffic, so the
//! broadcast costs nothing that matters. The node is one the cluster reports
//! serving slots, taken in turn: after a loss (closed, or a hung node that
//! stops answering the `PING` checks) the next attempt goes to the next node.
//!
//! A subscription that silently stops delivering is worse than none: purges
//! by other replicas are lost and this replica's L1 keeps serving purged
//! entries. So the connection is torn down and made again whenever
//! - the master changes (`+switch-master`, or the data connections resolved
//!   another address than the one subscribed to),
//! - a `PING` on the subscribed connection gets no answer within
//!   `pubsub_ping_timeout_ms` (a hung master: SIGSTOP, a network black hole;
//!   its socket stays open and no error ever comes), sent every
//!   `pubsub_ping_interval_ms`,
//! - the connection closes, or a channel is added.
//!
//! [`Subscriptions::live`] is true only while every channel is subscribed on
//! a connection that answered its last health check: the tiered store reads
//! it to stop serving L1 copies while purges may be getting lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use super::conn::{ConnError, Connector, Current};

/// Why a live subscription was torn down (`chartcache_redis_subscription_losses_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The server closed the connection (or it failed).
    Closed,
    /// No answer to `PING` within `pubsub_ping_timeout_ms`: the master hangs.
    PingTimeout,
    /// The master moved (`+switch-master`, or a new address was resolved).
    MasterChanged,
    /// A channel was added: subscribe again with all of them.
    ChannelsChanged,
}

impl Lost {
    /// Every reason, for the series created with the store (the `match`
    /// stops compiling when a reason is added and not listed here).
    pub fn all() -> [Lost; 4] {
        use Lost::*;
        let all = [Closed, PingTimeout, MasterChanged, ChannelsChanged];
        for l in all {
            match l {
                Closed | PingTimeout | MasterChanged | ChannelsChanged => {}
            }
        }
        all
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::Closed => "closed",
            Lost::PingTimeout => "ping_timeout",
            Lost::MasterChanged => "master_changed",
            Lost::ChannelsChanged => "channels_changed",
        }
    }
}

/// Called with each message's payload.
pub(crate) type OnMessage = Box<dyn Fn(&[u8]) + Send + Sync>;

/// What to do with one channel's messages.
pub(crate) struct Handler {
    pub channel: String,
    pub on_message: OnMessage,
    /// Runs each time the channel is (re)subscribed, before `live` turns true:
    /// messages may have been missed while it was not.
    pub on_subscribed: Box<dyn Fn() + Send + Sync>,
    /// Runs when a subscription made with `on_subscribed` is given up.
    pub on_lost: Box<dyn Fn() + Send + Sync>,
    /// Subscriptions made so far (tests, health).
    pub count: Arc<AtomicU64>,
}

/// The channels this replica listens to, and whether it currently does.
pub struct Subscriptions {
    handlers: Mutex<Vec<Arc<Handler>>>,
    /// Bumped when the connection must be made again (a channel was added,
    /// the master changed); `wake` tells the loop.
    generation: AtomicU64,
    wake: Notify,
    started: AtomicBool,
    live: AtomicBool,
    /// `chartcache_redis_subscription_live`
    gauge: IntGauge,
    /// `chartcache_redis_subscription_losses_total{reason}`
    losses: IntCounterVec,
}

impl Subscriptions {
    pub(crate) fn new(gauge: IntGauge, losses: IntCounterVec) -> Subscriptions {
        gauge.set(0);
        Subscriptions {
            handlers: Mutex::default(),
            generation: AtomicU64::new(0),
            wake: Notify::new(),
            started: AtomicBool::new(false),
            live: AtomicBool::new(false),
            gauge,
            losses,
        }
    }

    /// Every channel is subscribed on a connection to the current master that
    /// answered its last health check. One atomic load: read on every L1 hit.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    fn set_live(&self, v: bool) {
        self.live.store(v, Ordering::Release);
        self.gauge.set(i64::from(v));
    }

    /// Make the connection again (master changed, channel added).
    pub(crate) fn renew(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn snapshot(&self) -> Vec<Arc<Handler>> {
        self.handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl RedisStore {
    /// Listen to `h.channel` from now on, on the one subscription connection
    /// (started by the first channel; adding one makes the connection again).
    pub(crate) fn add_channel(self: &Arc<Self>, h: Handler) {
        let subs = &self.subs;
        // Not live until the new channel is subscribed too.
        subs.set_live(false);
        subs.handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(h));
        subs.renew();
        if !subs.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(subscription_loop(Arc::downgrade(self), self.stop.clone()));
        }
    }
}

/// What the loop needs, without holding the store alive.
struct Ctx {
    conn: Arc<Connector>,
    subs: Arc<Subscriptions>,
    connect: Duration,
    ping_every: Duration,
    ping_timeout: Duration,
}

fn ctx(store: &Weak<RedisStore>) -> Option<Ctx> {
    let me = store.upgrade()?;
    Some(Ctx {
        conn: me.conn.clone(),
        subs: me.subs.clone(),
        connect: Duration::from_millis(me.cfg.connect_timeout_ms),
        ping_every: Duration::from_millis(me.cfg.pubsub_ping_interval_ms),
        ping_timeout: Duration::from_millis(me.cfg.pubsub_ping_timeout_ms),
    })
}

/// Subscribe, deliver, check, and start over, for as long as the store lives.
async fn subscription_loop(store: Weak<RedisStore>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    // Which node to try (cluster): moves on after each loss or failure.
    let mut turn = 0usize;
    while !stop.is_cancelled() {
        let Some(cx) = ctx(&store) else { return };
        let generation = cx.subs.generation.load(Ordering::SeqCst);
        let handlers = cx.subs.snapshot();
        let channels: Vec<String> = handlers.iter().map(|h| h.channel.clone()).collect();
        let attempt = tokio::time::timeout(cx.connect, async {
            let cur = cx.conn.current().await?;
            let (info, node) = cx.conn.pubsub_target(&cur, turn).await?;
            let ps = cx.conn.client(info)?.get_async_pubsub().await?;
            let (mut sink, stream) = ps.split();
            sink.subscribe(&channels).await?;
            Ok::<_, ConnError>((cur, node, sink, stream))
        });
        // A master change while subscribing to a hung one: start over at once
        // rather than wait for this attempt to time out.
        let sub = tokio::select! {
            _ = stop.cancelled() => return,
            _ = cx.subs.wake.notified() => continue,
            sub = attempt => sub,
        };
        match sub {
            Ok(Ok((cur, node, mut sink, mut stream))) => {
                for h in &handlers {
                    (h.on_subscribed)();
                    h.count.fetch_add(1, Ordering::SeqCst);
                }
                // A change requested while subscribing: go round again at once.
                let lost = if cx.subs.generation.load(Ordering::SeqCst) != generation {
                    Some(Lost::ChannelsChanged)
                } else {
                    cx.subs.set_live(true);
                    tracing::debug!(node = %node, ?channels, "redis subscriptions live");
                    backoff = Duration::from_millis(50);
                    watch(
                        &cx,
                        &cur,
                        generation,
                        &handlers,
                        &mut sink,
                        &mut stream,
                        &stop,
                    )
                    .await
                };
                cx.subs.set_live(false);
                let Some(lost) = lost else { return };
                for h in &handlers {
                    (h.on_lost)();
                }
                cx.subs.losses.with_label_values(&[lost.as_str()]).inc();
                if lost == Lost::ChannelsChanged {
                    // Startup adds the channels one by one: not worth a log line.
                    tracing::debug!(node = %node, "redis channel added; subscribing again");
                    continue;
                }
                turn = turn.wrapping_add(1);
                tracing::warn!(node = %node, reason = lost.as_str(), "redis subscriptions lost; subscribing again");
                if lost == Lost::MasterChanged {
                    continue;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis subscribe failed");
                cx.conn.on_error(&e, None);
                turn = turn.wrapping_add(1);
            }
            Err(_) => {
                tracing::debug!("redis subscribe timed out");
                turn = turn.wrapping_add(1);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            // A master change: no reason to wait.
            _ = cx.subs.wake.notified() => {}
        }
        drop(cx);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Deliver messages until the subscription must be made again (`None`: stop).
async fn watch(
    cx: &Ctx,
    cur: &Arc<Current>,
    mut generation: u64,
    handlers: &[Arc<Handler>],
    sink: &mut redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    stop: &CancellationToken,
) -> Option<Lost> {
    let mut tick = tokio::time::interval(cx.ping_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = cx.subs.wake.notified() => {
                let now = cx.subs.generation.load(Ordering::SeqCst);
                if now != generation {
                    if cx.subs.snapshot().len() != handlers.len() {
                        return Some(Lost::ChannelsChanged);
                    }
                    // `+switch-master` names the master this connection may
                    // already be on (it was made after the data path moved):
                    // keep it then, and the L1 with it.
                    if moved(cx, cur).await {
                        return Some(Lost::MasterChanged);
                    }
                    generation = now;
                }
            }
            m = stream.next() => match m {
                Some(m) => {
                    let ch = m.get_channel_name();
                    if let Some(h) = handlers.iter().find(|h| h.channel == ch) {
                        (h.on_message)(m.get_payload_bytes());
                    }
                }
                None => return Some(Lost::Closed),
            },
            _ = tick.tick() => {
                if moved(cx, cur).await {
                    return Some(Lost::MasterChanged);
                }
                let ping = tokio::time::timeout(cx.ping_timeout, sink.ping::<redis::Value>()).await;
                match ping {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Some(Lost::Closed),
                    Err(_) => return Some(Lost::PingTimeout),
                }
            }
        }
    }
}

/// Do the data connections use another master than the subscription? After a
/// reset (connection errors, `READONLY`) the master is resolved again here,
/// within the ping timeout, so a failover seen by the data path alone is
/// followed too.
async fn moved(cx: &Ctx, cur: &Arc<Current>) -> bool {
    match tokio::time::timeout(cx.ping_timeout, cx.conn.current()).await {
        Ok(Ok(now)) => now.addr != cur.addr,
        // Not resolvable now: the PING decides whether this master still serves.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reasons_are_distinct_labels() {
        let all = [
            Lost::Closed,
            Lost::PingTimeout,
            Lost::MasterChanged,
            Lost::ChannelsChanged,
        ];
        let mut labels: Vec<_> = all.iter().map(|l| l.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }

    #[tokio::test]
    async fn live_only_after_set_and_renew_wakes_once() {
        let g = IntGauge::new("g", "g").unwrap();
        let l = IntCounterVec::new(prometheus::Opts::new("l", "l"), &["reason"]).unwrap();
        let s = Subscriptions::new(g.clone(), l);
        assert!(!s.live());
        s.set_live(true);
        assert!(s.live());
        assert_eq!(g.get(), 1);
        let before = s.generation.load(Ordering::SeqCst);
        s.renew();
        assert_eq!(s.generation.load(Ordering::SeqCst), before + 1);
        // The wake-up is kept for a loop that is not waiting yet.
        tokio::time::timeout(Duration::from_secs(1), s.wake.notified())
            .await
            .expect("permit stored");
    }
}
