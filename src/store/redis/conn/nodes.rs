//! Cluster mode: when the cluster connections are rebuilt, and which node
//! the subscription connection goes to.

use std::time::Duration;

use redis::ConnectionInfo;

use super::super::cluster;
use super::{ConnError, Connector, Current, Mode, display_addr};

/// Connections are rebuilt for node trouble at most this often.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

/// An error that says a node is gone, hangs or has no master for the slot:
/// the slot map may be stale.
pub(super) fn node_trouble(re: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as S;
    re.is_io_error()
        || re.is_connection_dropped()
        || re.is_connection_refusal()
        || re.is_timeout()
        || matches!(
            re.kind(),
            redis::ErrorKind::ClusterConnectionNotFound
                | redis::ErrorKind::Server(
                    S::ClusterDown | S::MasterDown | S::TryAgain | S::ReadOnly
                )
        )
}

impl Connector {
    /// Cluster mode: drop the cluster connections, at most once per
    /// [`REBUILD_EVERY`], so that the next operations read the slot map
    /// afresh from the nodes that answer. The cluster connection re-reads
    /// the slots on `MOVED`, but a master that died or hangs sends none: its
    /// slots would stay routed to it after its replica took over. Called on
    /// connection errors and by the topology watcher (`watch.rs`) when a
    /// replica took over; not on timeouts alone: a slow moment under load
    /// must not cost every connection.
    pub fn rebuild_cluster_if_due(&self) {
        let now = std::time::Instant::now();
        {
            let mut last = self.rebuilt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| now.duration_since(t) < REBUILD_EVERY) {
                return;
            }
            *last = Some(now);
        }
        if self.current.load().is_some() {
            self.rebuilds.inc();
        }
        self.reset_if("cluster node trouble", None);
    }

    /// Where the subscription connection goes, and its `host:port`. One
    /// server: the current master. Cluster: classic `PUBLISH` reaches every
    /// node, so any node will do; the `turn`-th of the nodes serving slots
    /// (as the cluster reports them now, else the seeds), so that a node that
    /// failed or hung is left for the next one when the loop comes round.
    pub async fn pubsub_target(
        &self,
        cur: &Current,
        turn: usize,
    ) -> Result<(ConnectionInfo, String), ConnError> {
        let Mode::Cluster(c) = &self.mode else {
            return Ok((cur.info.clone(), cur.addr.clone()));
        };
        let mut conn = cur.shared.pick();
        let found = tokio::time::timeout(self.connect_timeout, cluster::nodes(&mut conn)).await;
        let mut candidates: Vec<(ConnectionInfo, String)> = Vec::new();
        if let Ok(Ok(nodes)) = found {
            for n in nodes {
                candidates.push((c.node_info(&n.host, n.port)?, n.addr()));
            }
        }
        if candidates.is_empty() {
            candidates = c
                .seeds
                .iter()
                .map(|s| (s.clone(), display_addr(s.addr())))
                .collect();
        }
        let n = candidates.len().max(1);
        candidates
            .into_iter()
            .nth(turn % n)
            .ok_or_else(|| ConnError::NoMaster("no cluster node known".into()))
    }
}
