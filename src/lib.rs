//! chartcache: a caching reverse proxy for Apache Superset.
//!
//! Request flow: [`route`] classifies; pass-through requests are streamed to
//! Superset by [`proxy`]; chart-data requests go through [`fingerprint`] (the
//! canonical form) → [`policy`] (tier or bypass) → [`identity`] (the scope) →
//! [`key`] → [`store`] → [`coalesce`] → upstream → store → [`respond`].
//! Writes to Superset objects trigger [`invalidate`].
//!
//! The modules are listed in layers, bottom-up: a module imports from its own
//! layer and the layers listed before it, with one exception, and there
//! is no import circle. The exception runs up a layer: the async-job registry
//! (`jobs::registry`) keeps store entries and locks. `tests/it/module_graph.rs`
//! reads these layers and fails on a circle or a second upward import.

// Leaves: plain data and helpers that import nothing of the crate.
pub mod bounded;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod error;
pub mod jwt;
pub mod key;
pub mod time_range;
pub mod worker;

// What a request is: its route, canonical form, credentials and the rules
// that apply to it.
pub mod body;
pub mod context;
pub mod credentials;
pub mod fingerprint;
pub mod identity;
// Job tickets of async queries; its `registry` (held by `App`) uses `store`.
pub mod jobs;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod spec;
pub mod tags;
pub mod upstream;

// Services `App` holds.
pub mod coalesce;
pub mod invalidate;
pub mod offload;
pub mod refresh;
pub mod respond;
pub mod store;
pub mod tls;

// Process-wide state, built once.
pub mod app;

// Above `App`: the request path, the admin API, the listeners and the CLI's helpers.
pub mod admin;
pub mod explain;
pub mod healthcheck;
pub mod layers;
pub mod proxy;
pub mod server;

#[cfg(any(test, fuzzing))]
pub mod fuzz_harness;
#[cfg(test)]
pub(crate) mod testutil;
