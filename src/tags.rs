//! The tag vocabulary: the one place that spells the invalidation tags an entry
//! carries and the tags a write to a Superset object purges. Both sides are
//! built here so they cannot drift apart.
//!
//! Tags: `chart:{id}`, `dashboard:{id}`, `dataset:{id}__{type}`, `viz:{type}`,
//! and [`UNRESOLVED_DATASOURCE`] for an entry whose datasource is not known
//! (a saved chart's `GET /api/v1/chart/{id}/data/`, an `explore_json` request
//! that names only a `slice_id`): Superset reads the datasource from the saved
//! chart, so any dataset write may change such an entry and purges it.

use serde_json::Value;

use crate::route::ObjectKind;

/// Carried by entries whose datasource is unknown; purged by every dataset write.
pub const UNRESOLVED_DATASOURCE: &str = "dataset:unresolved";

/// `chart:{id}`.
pub fn chart(id: u64) -> String {
    format!("chart:{id}")
}

/// `dashboard:{id}`.
pub fn dashboard(id: u64) -> String {
    format!("dashboard:{id}")
}

/// `viz:{type}`.
pub fn viz(viz_type: &str) -> String {
    format!("viz:{viz_type}")
}

/// `dataset:{id}__{type}` for a datasource Superset will read as that id, or
/// [`UNRESOLVED_DATASOURCE`] when the text is not exactly `{digits}__{type}`.
///
/// Superset parses the id with Python's `int()`, which also accepts ` 1`,
/// `+1`, `0_1` and non-ASCII digits: such a spelling would otherwise give an
/// entry a tag no write ever names.
pub fn dataset(datasource: &str) -> String {
    match datasource.split_once("__") {
        Some((id, ty)) if !ty.is_empty() => match canonical_id(id) {
            Some(id) => dataset_id(id, ty),
            None => UNRESOLVED_DATASOURCE.to_string(),
        },
        _ => UNRESOLVED_DATASOURCE.to_string(),
    }
}

/// `dataset:{id}__{type}` from an already numeric id.
pub fn dataset_id(id: u64, ty: &str) -> String {
    format!("dataset:{id}__{ty}")
}

/// `{digits}` only (leading zeros allowed, as `int()` reads them), within u64.
fn canonical_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The tags a successful write to `kind` object `id` purges.
///
/// A dataset write purges the entries of that dataset and every entry whose
/// datasource is unresolved. Databases have no tag (their datasets are not
/// known here): the caller purges everything for them.
pub fn for_write(kind: ObjectKind, id: u64) -> Vec<String> {
    match kind {
        ObjectKind::Chart => vec![chart(id)],
        // Superset's chart-data datasources are `{id}__table` for datasets.
        ObjectKind::Dataset => vec![dataset_id(id, "table"), UNRESOLVED_DATASOURCE.to_string()],
        ObjectKind::Dashboard => vec![dashboard(id)],
        ObjectKind::Database => Vec::new(),
    }
}

/// Replace [`UNRESOLVED_DATASOURCE`] in `tags` with the datasource Superset
/// reports in its answer, when it reports one (`explore_json` answers carry
/// the form data they ran, `form_data.datasource`). `body` is Superset's own
/// answer, so what it names is what ran. Runs only when storing an entry
/// whose datasource was unresolved: never on a hit.
pub fn resolve_from_answer(tags: &mut [String], body: &[u8]) {
    let Some(pos) = tags.iter().position(|t| t == UNRESOLVED_DATASOURCE) else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(Value::String(ds)) = v.get("form_data").and_then(|fd| fd.get("datasource")) else {
        return;
    };
    let tag = dataset(ds);
    if tag != UNRESOLVED_DATASOURCE {
        tags[pos] = tag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_tags_only_for_plain_ids() {
        assert_eq!(dataset("1__table"), "dataset:1__table");
        assert_eq!(dataset("01__table"), "dataset:1__table");
        for odd in [
            " 1__table",
            "+1__table",
            "0_1__table",
            "١__table",
            "1",
            "1__",
            "__table",
            "99999999999999999999999__table",
        ] {
            assert_eq!(dataset(odd), UNRESOLVED_DATASOURCE, "{odd:?}");
        }
    }

    #[test]
    fn writes_name_the_tags_entries_carry() {
        assert_eq!(for_write(ObjectKind::Chart, 4), vec![chart(4)]);
        assert_eq!(for_write(ObjectKind::Dashboard, 3), vec![dashboard(3)]);
        let ds = for_write(ObjectKind::Dataset, 1);
        assert!(ds.contains(&dataset("1__table")));
        assert!(ds.contains(&UNRESOLVED_DATASOURCE.to_string()));
        assert!(for_write(ObjectKind::Database, 1).is_empty());
    }

    #[test]
    fn answers_resolve_an_unresolved_datasource() {
        let mut t = vec![chart(2), UNRESOLVED_DATASOURCE.to_string()];
        resolve_from_answer(
            &mut t,
            br#"{"form_data":{"datasource":"7__table"},"data":[]}"#,
        );
        assert_eq!(t, vec![chart(2), dataset("7__table")]);
        // Nothing usable in the answer: the entry stays purgeable by any dataset.
        for body in [
            &br#"{"result":[]}"#[..],
            b"not json",
            br#"{"form_data":{"datasource":" 7__table"}}"#,
        ] {
            let mut t = vec![UNRESOLVED_DATASOURCE.to_string()];
            resolve_from_answer(&mut t, body);
            assert_eq!(t, vec![UNRESOLVED_DATASOURCE.to_string()]);
        }
    }
}
