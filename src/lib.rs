//! chartcache: a caching reverse proxy for Apache Superset.
//!
//! Request flow: [`route`] classifies; pass-through requests are streamed to
//! Superset by [`proxy`]; chart-data requests go through [`identity`] →
//! [`fingerprint`] → [`policy`] → [`store`] → [`coalesce`] → upstream → store.
//! Writes to Superset objects trigger [`invalidate`].

pub mod admin;
pub mod app;
pub mod body;
pub mod bounded;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod context;
pub mod credentials;
pub mod deadline;
pub mod error;
pub mod explain;
pub mod fingerprint;
#[cfg(any(test, fuzzing))]
pub mod fuzz_harness;
pub mod healthcheck;
pub mod identity;
pub mod invalidate;
pub mod jobs;
pub mod jwt;
pub mod key;
pub mod layers;
pub mod metrics;
pub mod offload;
pub mod policy;
pub mod proxy;
pub mod refresh;
pub mod respond;
pub mod route;
pub mod server;
pub mod spec;
pub mod store;
pub mod tags;
pub mod time_range;
pub mod tls;
pub mod upstream;
pub mod worker;

#[cfg(test)]
pub(crate) mod testutil;
