//! Which `CHARTCACHE_*` environment variables are configuration.
//!
//! The sections and top-level keys are derived from the serialized defaults of
//! [`Config`], so a new section is overridable by env the day it is added.
//! Every other `CHARTCACHE_*` variable is refused at startup with its name: a
//! misspelt override silently doing nothing is worse than a pod that does not
//! start. The exceptions are the process's own non-config variables and those
//! Kubernetes injects for a Service named `chartcache` (service links).

use std::sync::OnceLock;

use figment::value::Value;

use crate::config::Config;

/// Top-level keys of the config, split by whether they hold a table.
struct Keys {
    /// Tables, set as `CHARTCACHE_<SECTION>__<KEY>`.
    sections: Vec<String>,
    /// Plain values (and arrays such as `tiers`), set as `CHARTCACHE_<KEY>`.
    scalars: Vec<String>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let v = Value::serialize(Config::default()).expect("defaults serialize");
        let dict = v.into_dict().expect("config serializes to a table");
        let mut k = Keys {
            sections: Vec::new(),
            scalars: Vec::new(),
        };
        for (name, v) in dict {
            match v {
                Value::Dict(..) => k.sections.push(name),
                _ => k.scalars.push(name),
            }
        }
        k
    })
}

/// Whether `CHARTCACHE_<key>` names a config key (`key` is without the prefix).
pub(crate) fn is_config_env(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let keys = keys();
    match k.split_once("__") {
        Some((section, rest)) => keys.sections.iter().any(|s| s == section) && !rest.is_empty(),
        None => keys.scalars.contains(&k),
    }
}

/// `CHARTCACHE_*` variables that are not config and are allowed anyway
/// (`key` is without the prefix).
fn is_known_other(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    // The log filter, the config file path and `--redis-url`'s variable.
    if k == "LOG" || k == "CONFIG" || k == "REDIS_URL" {
        return true;
    }
    // Kubernetes service links for a Service named `chartcache`:
    // CHARTCACHE_SERVICE_HOST, CHARTCACHE_SERVICE_PORT, CHARTCACHE_SERVICE_PORT_<NAME>,
    // CHARTCACHE_PORT, CHARTCACHE_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR].
    if k == "SERVICE_HOST" || k == "SERVICE_PORT" || k == "PORT" {
        return true;
    }
    if let Some(name) = k.strip_prefix("SERVICE_PORT_") {
        return !name.is_empty() && !name.contains("__");
    }
    if let Some(rest) = k.strip_prefix("PORT_") {
        let mut parts = rest.split('_');
        let port_ok = parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let proto_ok = matches!(parts.next(), Some("TCP" | "UDP" | "SCTP"));
        let suffix_ok = match parts.next() {
            None => true,
            Some(s) => matches!(s, "PROTO" | "PORT" | "ADDR") && parts.next().is_none(),
        };
        return port_ok && proto_ok && suffix_ok;
    }
    false
}

/// Refuse `CHARTCACHE_*` variables that name no config key, naming the first one.
pub(crate) fn check_names<I, S>(names: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    for name in names {
        let name = name.as_ref();
        let Some(key) = name.strip_prefix("CHARTCACHE_") else {
            continue;
        };
        if is_config_env(key) || is_known_other(key) {
            continue;
        }
        let keys = keys();
        anyhow::bail!(
            "unknown environment variable {name}: not a configuration key \
             (use CHARTCACHE_<KEY> for {} or CHARTCACHE_<SECTION>__<KEY> for the sections {})",
            keys.scalars.join(", "),
            keys.sections.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_config_is_a_section() {
        let k = keys();
        for s in [
            "routes",
            "identity",
            "cache",
            "memory",
            "upstream_client",
            "server",
            "admin",
            "log",
            "redis",
            "refresh_ahead",
        ] {
            assert!(k.sections.iter().any(|x| x == s), "{s}");
        }
        assert!(is_config_env("REFRESH_AHEAD__HOT_HITS"));
    }

    #[test]
    fn only_config_env_vars_are_read() {
        for k in [
            "UPSTREAM",
            "listen",
            "MEMORY__MAX_BYTES",
            "ADMIN__TOKEN",
            "LOG__FORMAT",
            "REDIS__URL",
            "REFRESH_AHEAD__LEAD_SECS",
        ] {
            assert!(is_config_env(k), "{k}");
        }
        for k in [
            "LOG",
            "CONFIG",
            "SERVICE_HOST",
            "PORT",
            "PORT_8080_TCP_ADDR",
            "MEMORY__",
            "NOPE__X",
            "REDIS_URL",
        ] {
            assert!(!is_config_env(k), "{k}");
        }
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        for bad in [
            "CHARTCACHE_REDIS_URI",
            "CHARTCACHE_NOPE__X",
            "CHARTCACHE_MEMORY__",
            "CHARTCACHE_UPSTREM",
            "CHARTCACHE_PORT_8080_TCP_NOPE",
            "CHARTCACHE_PORT_X_TCP",
        ] {
            let e = check_names([bad]).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn service_links_and_own_variables_are_allowed() {
        check_names([
            "CHARTCACHE_LOG",
            "CHARTCACHE_CONFIG",
            "CHARTCACHE_REDIS_URL",
            "CHARTCACHE_SERVICE_HOST",
            "CHARTCACHE_SERVICE_PORT",
            "CHARTCACHE_SERVICE_PORT_HTTP",
            "CHARTCACHE_SERVICE_PORT_ADMIN",
            "CHARTCACHE_PORT",
            "CHARTCACHE_PORT_8080_TCP",
            "CHARTCACHE_PORT_8080_TCP_PROTO",
            "CHARTCACHE_PORT_8080_TCP_PORT",
            "CHARTCACHE_PORT_9090_TCP_ADDR",
            "CHARTCACHE_UPSTREAM",
            "CHARTCACHE_REFRESH_AHEAD__HOT_HITS",
            "PATH",
        ])
        .unwrap();
    }
}
