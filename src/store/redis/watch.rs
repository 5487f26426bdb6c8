//! Watchers of the topology. Sentinel: `+switch-master` on every sentinel
//! drops the connections at once. Redis Cluster: the topology as the nodes
//! report it, read every
//! `pubsub_ping_interval_ms`, for the metrics (nodes by role, each node's
//! checks, slots that changed master) and to notice a failover at once.
//!
//! The cluster connection follows `MOVED` and `ASK` on its own (a reshard),
//! but a master that died or hangs sends nothing: when a slot's master is
//! replaced by a node that was not a master before, the connections are
//! rebuilt (rate-limited, see `Connector::rebuild_cluster_if_due`) rather
//! than waiting for operations on those slots to fail.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use super::cluster::{self, Conn};

/// Read the topology and check every node until the store is dropped.
pub(super) async fn watch_cluster(store: Weak<RedisStore>, stop: CancellationToken) {
    let mut owners: Option<Vec<Option<String>>> = None;
    loop {
        let every = match store.upgrade() {
            Some(me) => Duration::from_millis(me.cfg.pubsub_ping_interval_ms),
            None => return,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(me) = store.upgrade() else { return };
        let t = Duration::from_millis(me.cfg.pubsub_ping_timeout_ms);
        let Ok(Ok((mut c, _))) = tokio::time::timeout(t, me.conn.get()).await else {
            continue;
        };
        let Ok(Ok((nodes, now))) = tokio::time::timeout(t, cluster::topology(&mut c)).await else {
            continue;
        };
        let m = &me.metrics;
        let masters: Vec<String> = nodes
            .iter()
            .filter(|n| n.master)
            .map(|n| n.addr())
            .collect();
        m.redis_cluster_nodes
            .with_label_values(&["master"])
            .set(masters.len() as i64);
        m.redis_cluster_nodes
            .with_label_values(&["replica"])
            .set((nodes.len() - masters.len()) as i64);
        if let Some(before) = &owners {
            let moved = before.iter().zip(&now).filter(|(a, b)| a != b).count();
            m.redis_cluster_slot_moves.inc_by(moved as u64);
            // A slot now served by a node that was no master before: a
            // replica took over.
            let was_master: std::collections::HashSet<&String> = before.iter().flatten().collect();
            let promoted = now
                .iter()
                .zip(before)
                .any(|(n, b)| n != b && n.as_ref().is_some_and(|a| !was_master.contains(a)));
            if promoted {
                tracing::info!("redis cluster: a replica took over slots; reconnecting");
                me.conn.rebuild_cluster_if_due();
            }
        }
        owners = Some(now);
        if let Conn::Cluster(cc) = c {
            for n in &nodes {
                let mut cc = cc.clone();
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: n.host.clone(),
                    port: n.port,
                });
                let ping = tokio::time::timeout(t, cc.route_command(redis::cmd("PING"), route));
                let ok = matches!(ping.await, Ok(Ok(_)));
                let addr = n.addr();
                m.redis_cluster_node_up
                    .with_label_values(&[&addr])
                    .set(i64::from(ok));
                let errors = m.redis_cluster_node_errors.with_label_values(&[&addr]);
                if !ok {
                    errors.inc();
                }
            }
        }
    }
}

/// Sentinel mode: subscribe to `+switch-master` on every sentinel and drop the
/// connections as soon as one reports a new master for ours.
pub(super) async fn watch_switch_master(
    store: std::sync::Weak<RedisStore>,
    stop: CancellationToken,
) {
    let Some(me) = store.upgrade() else { return };
    let (sentinels, name) = me.conn.sentinels();
    let sentinels = sentinels.to_vec();
    let name = name.to_string();
    let t = Duration::from_millis(me.cfg.connect_timeout_ms);
    let conn = me.conn.clone();
    drop(me);
    for s in sentinels {
        let conn = conn.clone();
        let store = store.clone();
        let stop = stop.clone();
        let name = name.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let sub = tokio::time::timeout(t, async {
                    let mut ps = conn.client(s.clone())?.get_async_pubsub().await?;
                    ps.subscribe("+switch-master").await?;
                    RedisResult::Ok(ps)
                })
                .await;
                if let Ok(Ok(ps)) = sub {
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            m = stream.next() => match m {
                                // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                                Some(m) => {
                                    let p = String::from_utf8_lossy(m.get_payload_bytes()).to_string();
                                    if p.split(' ').next() == Some(name.as_str()) {
                                        let Some(me) = store.upgrade() else { return };
                                        me.conn.reset("+switch-master");
                                        // The subscriptions follow at once, not at their next check.
                                        me.subs.renew();
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }
}
