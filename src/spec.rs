//! What a fetch of a keyed request from Superset needs: built by the miss path,
//! kept by background refreshes.

use std::sync::Arc;

use bytes::Bytes;
use http::header;

use crate::config::TierConfig;
use crate::context::ConnInfo;
use crate::credentials::Credentials;
use crate::fingerprint::QueryFacts;
use crate::key::CacheKey;
use crate::policy::Decision;

/// Everything needed to (re)fetch a keyed request from Superset. Background
/// refreshes ([`crate::refresh`]) keep one per refreshed key.
#[derive(Clone)]
pub(crate) struct FetchSpec {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: Bytes,
    pub(crate) key: CacheKey,
    pub(crate) tags: Vec<String>,
    pub(crate) tier: Option<Arc<TierConfig>>,
    pub(crate) respect_superset_timeout: bool,
    pub(crate) custom_cache_timeout: Option<u64>,
    pub(crate) conn: ConnInfo,
    /// The credential set the key's scope was resolved from: the only
    /// credentials any fetch of this spec sends (rebuilt by
    /// [`crate::credentials::apply`] over `parts`).
    pub(crate) creds: Option<Credentials>,
    /// The route and scope of a client's miss (async queries remember them
    /// for a job's data); `None` for background fetches.
    pub(crate) origin: Option<(crate::route::CachedRoute, crate::identity::Scope)>,
}

impl FetchSpec {
    pub(crate) fn new(
        parts: http::request::Parts,
        body: Bytes,
        key: CacheKey,
        facts: &QueryFacts,
        decision: &Decision,
        conn: ConnInfo,
        creds: Option<Credentials>,
    ) -> FetchSpec {
        FetchSpec {
            parts,
            body,
            key,
            creds,
            tags: facts.tags(),
            tier: decision.tier.clone(),
            respect_superset_timeout: decision.respect_superset_timeout,
            custom_cache_timeout: facts.custom_cache_timeout,
            conn,
            origin: None,
        }
    }

    /// Drop what ties a request to its client connection (extensions such as the
    /// upgrade handle): a refresh outlives the request it was made from.
    pub(crate) fn detach(&mut self) {
        self.parts.extensions = http::Extensions::new();
        // No client waits for a background refresh, and a refresh-ahead may run
        // with another requester's credential: the request's own other cookies
        // (an async channel's `async-token`, say) stay with the request. The
        // fetch sends the resolved session cookie only.
        self.parts.headers.remove(header::COOKIE);
        self.creds = self.creds.as_ref().map(Credentials::detached);
        // The job outlives the request: keep no slice of the connection's buffers.
        for v in self.parts.headers.values_mut() {
            *v = crate::upstream::owned_header_value(v);
        }
        self.body = bytes::Bytes::copy_from_slice(&self.body);
    }
}
