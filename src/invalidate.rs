//! Invalidation: what a successful write to a Superset object purges, and the
//! one function every purge (admin API or automatic) goes through.

use crate::metrics::Metrics;
use crate::route::{ObjectKind, WriteTarget};
use crate::store::{Purge, Store};
use crate::tags;

/// The purge a successful write implies (tags from [`crate::tags`]).
///
/// A database change can affect any dataset on it and we do not know which, so
/// it purges everything; so do writes whose ids could not be read.
pub fn purge_for(target: &WriteTarget) -> Purge {
    if target.ids.is_empty() || target.kind == ObjectKind::Database {
        return Purge::All;
    }
    let tags = target
        .ids
        .iter()
        .flat_map(|id| tags::for_write(target.kind, *id))
        .collect();
    Purge::Tags(tags)
}

/// Apply a purge to the store (which fans it out to other replicas when it is
/// shared). Fails open: a store error is logged and counted, never raised.
pub async fn apply(
    store: &dyn Store,
    metrics: &Metrics,
    purge: &Purge,
    source: &'static str,
) -> Result<u64, crate::store::StoreError> {
    metrics.purges.with_label_values(&[source]).inc();
    let res = store.purge(purge).await;
    match &res {
        Ok(n) => {
            metrics.purged_entries.inc_by(*n);
            tracing::info!(?purge, removed = n, source, "purge");
        }
        Err(e) => {
            metrics
                .store_errors
                .with_label_values(&[store.name(), "purge"])
                .inc();
            tracing::warn!(?purge, error = %e, source, "purge failed");
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_map_to_tags() {
        let t = |kind, ids: Vec<u64>| purge_for(&WriteTarget { kind, ids });
        assert_eq!(
            t(ObjectKind::Dataset, vec![1]),
            Purge::Tags(vec!["dataset:1__table".into(), "dataset:unresolved".into()])
        );
        assert_eq!(
            t(ObjectKind::Chart, vec![4, 5]),
            Purge::Tags(vec!["chart:4".into(), "chart:5".into()])
        );
        assert_eq!(
            t(ObjectKind::Dashboard, vec![3]),
            Purge::Tags(vec!["dashboard:3".into()])
        );
        assert_eq!(t(ObjectKind::Database, vec![1]), Purge::All);
        assert_eq!(t(ObjectKind::Chart, vec![]), Purge::All);
    }
}
