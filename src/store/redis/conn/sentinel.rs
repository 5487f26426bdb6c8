//! Sentinel mode: which master the sentinels name, and whether it really is one.

use redis::aio::ConnectionLike;
use redis::{ConnectionInfo, RedisResult};

use super::{ConnError, Connector, display_addr};

impl Connector {
    /// First sentinel that names the master wins (no quorum needed to read it).
    pub(super) async fn ask_sentinels(
        &self,
        sentinels: &[ConnectionInfo],
        name: &str,
    ) -> Result<(String, u16), ConnError> {
        let mut last = String::from("no sentinels configured");
        for s in sentinels {
            let res = tokio::time::timeout(self.connect_timeout, async {
                let mut c = self.connect(s.clone()).await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            })
            .await;
            match res {
                Ok(Ok(Some(hp))) => return Ok(hp),
                Ok(Ok(None)) => last = format!("sentinels do not know master {name:?}"),
                Ok(Err(e)) => last = format!("sentinel {}: {e}", display_addr(s.addr())),
                Err(_) => last = format!("sentinel {}: timed out", display_addr(s.addr())),
            }
        }
        Err(ConnError::NoMaster(last))
    }

    /// The address a sentinel names may be stale mid-failover: insist on `ROLE master`.
    pub(super) async fn check_master(&self, info: &ConnectionInfo) -> Result<(), ConnError> {
        let role = tokio::time::timeout(self.connect_timeout, async {
            let mut c = self.connect(info.clone()).await?;
            role(&mut c).await
        })
        .await
        .map_err(|_| ConnError::NoMaster("master did not answer ROLE in time".into()))??;
        if role != "master" {
            return Err(ConnError::NoMaster(format!(
                "{} reports role {role}",
                display_addr(info.addr())
            )));
        }
        Ok(())
    }
}

/// `ROLE` → "master" | "slave" | "sentinel".
pub async fn role(c: &mut impl ConnectionLike) -> RedisResult<String> {
    let v: redis::Value = redis::cmd("ROLE").query_async(c).await?;
    if let redis::Value::Array(items) = v
        && let Some(first) = items.into_iter().next()
    {
        return Ok(redis::from_redis_value(first)?);
    }
    Ok(String::new())
}
