//! The response cache: complete answers kept in memory for the TTL the policy gives the model
//! serving first, per tenant, and served again without reserving budget or calling upstream.
//!
//! - **Key**: SHA-256 of the tenant, the endpoint and the normalised request
//!   ([`key::digest`]); one tenant never reads another's answers (the tenant is in the key,
//!   and checked again on every hit).
//! - **When**: after the decision (which gives the TTL and the policy revision) and before the
//!   budget reservation. A hit answers `x-llmgw-cache: hit` with cost 0; a miss that ends in a
//!   complete answer is stored (a stream once it has finished, assembled from its chunks);
//!   errors, truncated or resumed streams, content-filtered answers and answers served by a
//!   budget downgrade are not.
//! - **Client control**: `cache-control: no-cache` skips the cache both ways, `no-store` only
//!   the write (`x-llmgw-cache: bypass` when the cache was not used).
//! - **Near duplicates**: where the model's cache rule sets `semantic_threshold`, a chat request
//!   ending in a user turn whose exact key misses is compared with the recent prompts of its
//!   bucket (same tenant, model, parameters, system prompt and earlier messages, [`key::near`]):
//!   only the final user turns are compared, by a lexical vector ([`similar`]), and only those
//!   with the same [`facts`] (numbers, negations, names, languages, quotes, code) may match;
//!   the most similar one at or above the threshold is a hit.
//! - **Bounds**: entries are weighed in bytes (answer, vector, bookkeeping) against
//!   `--cache-max-bytes` by [`moka`], which evicts by recency and frequency; expired entries
//!   are never served.
//! - **Shared**: with `--state redis://…` the entries live in that Redis instead
//!   ([`shared`]), so every replica serves what any of them stored; each tenant keeps at most
//!   `--cache-tenant-entries` there, and an unavailable Redis makes lookups misses.

pub mod answer;
pub mod eval;
pub mod facts;
pub mod key;
pub mod shared;
pub mod similar;

use crate::upstream::{Delta, Usage};
use crate::wire::ClientRequest;
use answer::{Answer, Body, Chat, StreamCapture};
use bytes::Bytes;
use http::HeaderMap;
use key::Digest;
use llmgw_engine::decision::Decision;
use llmgw_engine::input::{Endpoint, Identity};
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use similar::{Index, Prompt, Slot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The default bound of the cache, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Bookkeeping bytes counted per entry besides its answer.
const OVERHEAD: usize = 256;

/// Labels of a cache lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `hit`, `near_hit`, `miss` or `bypass`.
    pub outcome: &'static str,
}

/// Labels of an eviction.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// `expired` or `size`.
    pub cause: &'static str,
}

/// The cache's metrics.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Lookups by outcome (`hit`, `near_hit`, `miss`, `bypass`).
    pub lookups: Family<LookupLabels, Counter>,
    /// Answers stored.
    pub stores: Counter,
    /// Entries removed by expiry or to make room.
    pub evictions: Family<EvictionLabels, Counter>,
    /// Bytes held.
    pub bytes: Gauge,
    /// Entries held.
    pub entries: Gauge,
    /// Shared cache operations that failed, timed out or were skipped while the state store
    /// was unavailable (each lookup among them a miss).
    pub errors: Counter,
}

impl CacheMetrics {
    /// Registers the metrics (`llmgw_cache_*`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_lookups",
            "Response cache lookups by outcome: hit, near_hit (near-duplicate prompt), miss, bypass",
            self.lookups.clone(),
        );
        registry.register(
            "cache_stores",
            "Answers stored in the response cache",
            self.stores.clone(),
        );
        registry.register(
            "cache_evictions",
            "Response cache entries removed, by cause: expired or size",
            self.evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by the response cache",
            self.bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Entries held by the response cache",
            self.entries.clone(),
        );
        registry.register(
            "cache_errors",
            "Shared (Redis) response cache operations that failed, timed out or were skipped while the state store was unavailable; a lookup among them is a miss",
            self.errors.clone(),
        );
    }

    fn lookup(&self, outcome: &'static str) {
        self.lookups.get_or_create(&LookupLabels { outcome }).inc();
    }
}

/// One stored answer.
#[derive(Debug)]
struct Entry {
    /// Which storing this is (a key stored again is a new entry).
    id: u64,
    tenant: Box<str>,
    answer: Answer,
    ttl: Duration,
    stored: Instant,
    /// Its near-duplicate bucket and final user turn, when indexed.
    near: Option<(Digest, Arc<Prompt>)>,
    weight: u32,
}

/// Each entry lives for its own TTL, from when it was (last) stored.
struct PerEntryTtl;

impl Expiry<Digest, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Digest,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Digest,
        entry: &Arc<Entry>,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The largest entry a cache of `max_bytes` keeps: an eighth of it.
fn entry_limit(max_bytes: u64) -> usize {
    usize::try_from(max_bytes / 8)
        .unwrap_or(usize::MAX)
        .clamp(1, u32::MAX as usize)
}

/// The bytes an entry weighs: its answer, its prompt vector and bookkeeping.
fn weight(store: &Store, answer: &Answer) -> usize {
    let answer_bytes = match &answer.body {
        Body::Chat(c) => c.bytes(),
        Body::Embeddings(b) => b.len(),
    };
    OVERHEAD
        + answer.model.len()
        + answer.provider.len()
        + store.tenant.len()
        + answer_bytes
        + store.near.as_ref().map_or(0, |(_, v)| v.bytes())
}

/// The response cache.
pub struct ResponseCache {
    max_bytes: u64,
    inner: OnceLock<Inner>,
    /// The Redis tier that replaces the in-memory one, with Redis state.
    shared: Option<shared::Shared>,
    metrics: CacheMetrics,
}

struct Inner {
    entries: Cache<Digest, Arc<Entry>>,
    index: Arc<Index>,
    next_id: AtomicU64,
}

impl Inner {
    fn new(max_bytes: u64, metrics: &CacheMetrics) -> Inner {
        let index = Arc::new(Index::default());
        let on_removal = {
            let index = index.clone();
            let metrics = metrics.clone();
            move |key: Arc<Digest>, entry: Arc<Entry>, cause: RemovalCause| {
                metrics.bytes.dec_by(i64::from(entry.weight));
                metrics.entries.dec();
                let cause = match cause {
                    RemovalCause::Expired => Some("expired"),
                    RemovalCause::Size => Some("size"),
                    RemovalCause::Explicit | RemovalCause::Replaced => None,
                };
                if let Some(cause) = cause {
                    metrics
                        .evictions
                        .get_or_create(&EvictionLabels { cause })
                        .inc();
                }
                if let Some((bucket, _)) = &entry.near {
                    index.remove(bucket, &key, entry.id);
                }
            }
        };
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Digest, e: &Arc<Entry>| e.weight)
            .expire_after(PerEntryTtl)
            .eviction_listener(on_removal)
            .build();
        Inner {
            entries,
            index,
            next_id: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("enabled", &(self.max_bytes > 0))
            .field("shared", &self.shared)
            .finish()
    }
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` (0 turns caching off), counting into `metrics`. Its
    /// tables are built when the first cacheable request comes.
    pub fn new(max_bytes: u64, metrics: CacheMetrics) -> Self {
        ResponseCache {
            max_bytes,
            inner: OnceLock::new(),
            shared: None,
            metrics,
        }
    }

    /// A cache keeping its entries in Redis ([`shared`]) rather than in memory, so that every
    /// replica on that Redis shares them; `max_bytes` only bounds one entry (an eighth of it)
    /// and 0 turns caching off.
    pub fn shared(max_bytes: u64, metrics: CacheMetrics, shared: shared::Shared) -> Self {
        ResponseCache {
            shared: Some(shared),
            ..ResponseCache::new(max_bytes, metrics)
        }
    }

    fn inner(&self) -> &Inner {
        self.inner
            .get_or_init(|| Inner::new(self.max_bytes, &self.metrics))
    }

    /// Looks a request up on the policy's `terms`. `headers` are the client's
    /// (`cache-control`).
    pub async fn lookup(
        &self,
        headers: &HeaderMap,
        request: &ClientRequest,
        identity: &Identity,
        terms: Terms,
    ) -> Lookup {
        let found = self.find(headers, request, identity, terms).await;
        self.metrics.lookup(match &found {
            Lookup::Hit(hit) => hit.outcome(),
            Lookup::Miss(_) => "miss",
            Lookup::Bypass => "bypass",
        });
        found
    }

    /// The cached answer of a request refused before it could be served otherwise (a budget
    /// that blocks it): a hit costs nothing, so it is served all the same. Only a hit counts
    /// as a lookup.
    pub async fn hit_only(
        &self,
        headers: &HeaderMap,
        request: &ClientRequest,
        identity: &Identity,
        terms: Terms,
    ) -> Option<Hit> {
        match self.find(headers, request, identity, terms).await {
            Lookup::Hit(hit) => {
                self.metrics.lookup(hit.outcome());
                Some(hit)
            }
            _ => None,
        }
    }

    async fn find(
        &self,
        headers: &HeaderMap,
        request: &ClientRequest,
        identity: &Identity,
        terms: Terms,
    ) -> Lookup {
        if self.max_bytes == 0 {
            return Lookup::Bypass;
        }
        let control = Control::of(headers);
        if terms.ttl_secs == 0 || control.no_cache || !key::cacheable(request) {
            return Lookup::Bypass;
        }
        let tenant = identity.tenant.id.as_str();
        let digest = key::digest(tenant, request);
        let near = terms.semantic_threshold.and_then(|t| {
            let (bucket, text) = key::near(tenant, request)?;
            Some((bucket, Arc::new(Prompt::of(&text)), t))
        });
        let found = match &self.shared {
            Some(shared) => {
                let near = near.as_ref().map(|(b, p, t)| (b, &**p, *t));
                shared.lookup(tenant, &digest, near).await
            }
            None => self.inner().find(&digest, tenant, near.as_ref()),
        };
        if let Some(hit) = found {
            return Lookup::Hit(hit);
        }
        if control.no_store {
            return Lookup::Bypass;
        }
        Lookup::Miss(Store {
            digest,
            tenant: tenant.into(),
            near: near.map(|(b, v, _)| (b, v)),
            limit: entry_limit(self.max_bytes),
        })
    }

    /// Runs pending evictions (expired entries leave the byte count); called periodically.
    pub fn maintain(&self) {
        if let Some(inner) = self.inner.get() {
            inner.entries.run_pending_tasks();
        }
    }

    fn insert(&self, store: Store, decision: &Decision, answer: Answer) {
        if decision.cache_ttl_secs == 0 || decision.downgrade.is_some() {
            return;
        }
        let weight = weight(&store, &answer);
        if weight > store.limit {
            return;
        }
        if let Some(shared) = &self.shared {
            let near = store.near.as_ref().map(|(b, p)| (b, &**p));
            let ttl = Duration::from_secs(decision.cache_ttl_secs);
            shared.insert(&store.tenant, &store.digest, near, ttl, &answer);
            return;
        }
        let Some(inner) = self.inner.get() else {
            return;
        };
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some((bucket, prompt)) = &store.near {
            let slot = Slot {
                key: store.digest,
                id,
                prompt: prompt.clone(),
            };
            inner.index.add(*bucket, slot);
        }
        self.metrics.stores.inc();
        self.metrics.bytes.inc_by(i64::from(weight));
        self.metrics.entries.inc();
        let entry = Entry {
            id,
            tenant: store.tenant,
            answer,
            ttl: Duration::from_secs(decision.cache_ttl_secs),
            stored: Instant::now(),
            near: store.near,
            weight,
        };
        inner.entries.insert(store.digest, Arc::new(entry));
    }
}

impl Inner {
    /// The answer cached for `digest` of `tenant`, else (with `near`) the most similar prompt's
    /// of its bucket.
    fn find(
        &self,
        digest: &Digest,
        tenant: &str,
        near: Option<&(Digest, Arc<Prompt>, f64)>,
    ) -> Option<Hit> {
        if let Some(entry) = self.entries.get(digest) {
            if &*entry.tenant == tenant {
                return Some(Hit {
                    entry,
                    similarity: None,
                });
            }
        }
        let (bucket, prompt, threshold) = near?;
        self.nearest(bucket, prompt, *threshold, tenant)
    }

    /// The most similar prompt of the bucket at or above `threshold`, with the same facts,
    /// whose answer is still cached.
    fn nearest(
        &self,
        bucket: &Digest,
        prompt: &Prompt,
        threshold: f64,
        tenant: &str,
    ) -> Option<Hit> {
        // Compared outside the index's lock; the cache is read after it is released (its
        // removals take that lock).
        let slots = self.index.slots(bucket);
        if slots.is_empty() {
            return None;
        }
        let dense = prompt.vector.dense();
        let mut scored: Vec<(f32, Slot)> = slots
            .into_iter()
            .filter(|s| s.prompt.facts == prompt.facts)
            .map(|s| (s.prompt.vector.cosine(&dense), s))
            .filter(|(sim, _)| f64::from(*sim) >= threshold - 1e-6)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().find_map(|(sim, slot)| {
            let entry = self.entries.get(&slot.key)?;
            (entry.id == slot.id && &*entry.tenant == tenant).then_some(Hit {
                entry,
                similarity: Some(sim.min(1.0)),
            })
        })
    }
}

/// What the policy says about caching a request.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    /// How long its answer is kept (0: not cached).
    pub ttl_secs: u64,
    /// Similarity above which a near-duplicate prompt is a hit, when the rule sets one.
    pub semantic_threshold: Option<f64>,
}

impl Terms {
    /// The terms of a decision: the cache rule of the model serving first.
    pub fn of(decision: &Decision) -> Self {
        Terms {
            ttl_secs: decision.cache_ttl_secs,
            semantic_threshold: decision.cache_semantic_threshold,
        }
    }
}

/// The request's `cache-control` directives.
#[derive(Debug, Default, Clone, Copy)]
struct Control {
    no_cache: bool,
    no_store: bool,
}

impl Control {
    fn of(headers: &HeaderMap) -> Self {
        let mut c = Control::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let d = directive.trim();
                c.no_cache |= d.eq_ignore_ascii_case("no-cache");
                c.no_store |= d.eq_ignore_ascii_case("no-store");
            }
        }
        c
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A cached answer.
    Hit(Hit),
    /// Not cached: the answer may be stored.
    Miss(Store),
    /// The cache was not used (caching off for the model, `no-cache`, a miss under `no-store`,
    /// or a request whose answer cannot be replayed).
    Bypass,
}

impl Lookup {
    /// The `x-llmgw-cache` value.
    pub fn header(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "hit",
            Lookup::Miss(_) => "miss",
            Lookup::Bypass => "bypass",
        }
    }
}

/// A cached answer found for a request.
#[derive(Debug)]
pub struct Hit {
    entry: Arc<Entry>,
    similarity: Option<f32>,
}

impl Hit {
    /// The logical model that produced the answer.
    pub fn model(&self) -> &str {
        &self.entry.answer.model
    }

    /// The provider that produced the answer.
    pub fn provider(&self) -> &str {
        &self.entry.answer.provider
    }

    /// How long ago the answer was stored.
    pub fn age(&self) -> Duration {
        self.entry.stored.elapsed()
    }

    /// The cosine similarity of the prompt it was found by, for a near-duplicate hit.
    pub fn similarity(&self) -> Option<f32> {
        self.similarity
    }

    /// The log's name of the outcome: `hit` or `near_hit`.
    pub fn outcome(&self) -> &'static str {
        if self.similarity.is_some() {
            "near_hit"
        } else {
            "hit"
        }
    }

    /// A chat answer as stream deltas and its usage, for doors that write their own stream
    /// (nothing for an embeddings answer).
    pub fn replay(&self) -> (Vec<Delta>, Usage) {
        let a = &self.entry.answer;
        match &a.body {
            Body::Chat(c) => (c.deltas(), a.usage),
            Body::Embeddings(_) => (Vec::new(), a.usage),
        }
    }

    /// The answer as the request wants it: a JSON body, or (`stream`) the SSE events.
    /// `id` names the completion.
    pub fn body(&self, id: &str, created: u64, stream: bool, include_usage: bool) -> Bytes {
        let a = &self.entry.answer;
        match &a.body {
            Body::Chat(c) if stream => c.stream(id, created, &a.model, a.usage, include_usage),
            Body::Chat(c) => c.completion(id, created, &a.model, a.usage),
            Body::Embeddings(b) => b.clone(),
        }
    }
}

/// How to store the answer of a miss.
#[derive(Debug)]
pub struct Store {
    digest: Digest,
    tenant: Box<str>,
    near: Option<(Digest, Arc<Prompt>)>,
    limit: usize,
}

impl Store {
    /// Stores a whole answer (`body` OpenAI-shaped, with the served model set). `decision` is
    /// the one that served (after any downgrade).
    pub fn full(
        self,
        cache: &ResponseCache,
        decision: &Decision,
        endpoint: Endpoint,
        body: &Value,
        usage: Usage,
        served: (&Arc<str>, &Arc<str>),
    ) {
        let body = match endpoint {
            Endpoint::Chat => match Chat::from_completion(body) {
                Some(c) => Body::Chat(c),
                None => return,
            },
            Endpoint::Embeddings => {
                if !body.get("data").is_some_and(Value::is_array) {
                    return;
                }
                Body::Embeddings(Bytes::from(body.to_string()))
            }
        };
        let answer = Answer {
            model: served.0.clone(),
            provider: served.1.clone(),
            usage,
            body,
        };
        cache.insert(self, decision, answer);
    }

    /// Starts assembling a streamed answer.
    pub fn capture(self) -> Capture {
        Capture {
            chunks: StreamCapture::new(self.limit),
            store: self,
        }
    }
}

/// A streamed answer being assembled for the cache.
#[derive(Debug)]
pub struct Capture {
    store: Store,
    chunks: StreamCapture,
}

impl Capture {
    /// Adds a delta as it is sent to the client.
    pub fn push(&mut self, d: &Delta) {
        self.chunks.push(d);
    }

    /// Stores the answer of a stream that ended cleanly on one model (`served`); kept only
    /// when it ended with a finish reason.
    pub fn finish(
        self,
        cache: &ResponseCache,
        decision: &Decision,
        usage: Usage,
        served: (&Arc<str>, &Arc<str>),
    ) {
        let Some(chat) = self.chunks.finish() else {
            return;
        };
        let answer = Answer {
            model: served.0.clone(),
            provider: served.1.clone(),
            usage,
            body: Body::Chat(chat),
        };
        cache.insert(self.store, decision, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_engine::input::Principal;
    use std::collections::BTreeMap;

    impl ResponseCache {
        /// [`ResponseCache::lookup`] of the in-memory cache, which never waits.
        fn lookup_now(
            &self,
            headers: &HeaderMap,
            request: &ClientRequest,
            identity: &Identity,
            terms: Terms,
        ) -> Lookup {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(self.lookup(headers, request, identity, terms))
        }
    }

    fn request(body: &str) -> ClientRequest {
        crate::wire::parse(Endpoint::Chat, body.as_bytes(), BTreeMap::new()).expect("valid")
    }

    fn identity(tenant: &str) -> Identity {
        Identity {
            tenant: Arc::new(Principal {
                id: tenant.into(),
                labels: Default::default(),
            }),
            ..Identity::default()
        }
    }

    fn decision(ttl: u64) -> Decision {
        Decision {
            revision: "unit".into(),
            rule: "r".into(),
            strategy: llmgw_engine::model::Strategy::Priority,
            requested_model: "m".into(),
            model: "m".into(),
            attempts: Vec::new(),
            budget_action: llmgw_engine::decision::BudgetAction::Allow,
            budget: None,
            reservations: Vec::new(),
            rate_charges: Vec::new(),
            downgrade: None,
            canary: None,
            estimated_cost_usd: 0.0,
            cache_ttl_secs: ttl,
            cache_semantic_threshold: None,
            eval_errors: Vec::new(),
        }
    }

    fn completion(text: &str) -> Value {
        serde_json::json!({ "choices": [{ "index": 0, "finish_reason": "stop",
            "message": { "role": "assistant", "content": text } }] })
    }

    const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    fn store(cache: &ResponseCache, tenant: &str, body: &str, text: &str) {
        let req = request(body);
        let d = decision(60);
        let Lookup::Miss(s) =
            cache.lookup_now(&HeaderMap::new(), &req, &identity(tenant), Terms::of(&d))
        else {
            panic!("expected a miss");
        };
        let (m, p): (Arc<str>, Arc<str>) = ("m".into(), "p".into());
        s.full(
            cache,
            &d,
            Endpoint::Chat,
            &completion(text),
            Usage::default(),
            (&m, &p),
        );
    }

    #[test]
    fn a_stored_answer_is_served_to_its_tenant_only() {
        let cache = ResponseCache::new(1 << 20, CacheMetrics::default());
        store(&cache, "a", BODY, "hello");
        let d = decision(60);
        let req = request(BODY);
        let Lookup::Hit(hit) =
            cache.lookup_now(&HeaderMap::new(), &req, &identity("a"), Terms::of(&d))
        else {
            panic!("expected a hit");
        };
        let body: Value = serde_json::from_slice(&hit.body("x", 1, false, false)).expect("json");
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
        assert_eq!((hit.model(), hit.provider()), ("m", "p"));
        assert!(matches!(
            cache.lookup_now(&HeaderMap::new(), &req, &identity("b"), Terms::of(&d)),
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn cache_control_and_a_zero_ttl_bypass_the_cache() {
        let cache = ResponseCache::new(1 << 20, CacheMetrics::default());
        store(&cache, "a", BODY, "hello");
        let req = request(BODY);
        let who = identity("a");
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=0, No-Cache".parse().expect("v"),
        );
        assert!(matches!(
            cache.lookup_now(&h, &req, &who, Terms::of(&decision(60))),
            Lookup::Bypass
        ));
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().expect("v"));
        assert!(matches!(
            cache.lookup_now(&h, &req, &who, Terms::of(&decision(60))),
            Lookup::Hit(_)
        ));
        let other = request(r#"{"model":"m","messages":[{"role":"user","content":"ho"}]}"#);
        assert!(matches!(
            cache.lookup_now(&h, &other, &who, Terms::of(&decision(60))),
            Lookup::Bypass
        ));
        assert!(matches!(
            cache.lookup_now(&HeaderMap::new(), &req, &who, Terms::of(&decision(0))),
            Lookup::Bypass
        ));
        let off = ResponseCache::new(0, CacheMetrics::default());
        assert!(matches!(
            off.lookup_now(&HeaderMap::new(), &req, &who, Terms::of(&decision(60))),
            Lookup::Bypass
        ));
    }

    fn chat_body(prompt: &str) -> String {
        serde_json::json!({ "model": "m", "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": prompt }] })
        .to_string()
    }

    /// Whether `second` is served the answer stored for `first` at `threshold`.
    fn near_hit(first: &str, second: &str, threshold: f64) -> bool {
        let cache = ResponseCache::new(1 << 20, CacheMetrics::default());
        let mut d = decision(60);
        d.cache_semantic_threshold = Some(threshold);
        let who = identity("a");
        let Lookup::Miss(s) = cache.lookup_now(
            &HeaderMap::new(),
            &request(&chat_body(first)),
            &who,
            Terms::of(&d),
        ) else {
            panic!("expected a miss");
        };
        let (m, p): (Arc<str>, Arc<str>) = ("m".into(), "p".into());
        s.full(
            &cache,
            &d,
            Endpoint::Chat,
            &completion("x"),
            Usage::default(),
            (&m, &p),
        );
        let found = cache.lookup_now(
            &HeaderMap::new(),
            &request(&chat_body(second)),
            &who,
            Terms::of(&d),
        );
        matches!(found, Lookup::Hit(h) if h.similarity().is_some())
    }

    #[test]
    fn near_misses_that_change_the_answer_never_hit() {
        let email = "Hi Anna, thanks for the quick delivery. The invoice is attached; \
                     could you confirm the payment date? Best regards, Tom";
        let french = format!("Translate this email into French: {email}");
        let german = format!("Translate this email into German: {email}");
        let yes = "Reply YES if this is a complaint: my order arrived two weeks late.";
        let no = "Reply NO if this is a complaint: my order arrived two weeks late.";
        for threshold in [0.5, 0.8, 0.9] {
            assert!(!near_hit(&french, &german, threshold), "{threshold}");
            assert!(!near_hit(yes, no, threshold), "{threshold}");
        }
        // The same prompts retyped do hit.
        assert!(near_hit(
            &french,
            &french.replace("Translate", "translate").replace("?", " ?"),
            0.9
        ));
        assert!(near_hit(yes, &format!("{yes} "), 0.9));
    }

    #[test]
    fn a_downgraded_answer_is_not_stored_and_bytes_are_counted() {
        let metrics = CacheMetrics::default();
        let cache = ResponseCache::new(1 << 20, metrics.clone());
        let req = request(BODY);
        let mut d = decision(60);
        d.downgrade = Some(llmgw_engine::decision::Downgrade {
            from: "m".into(),
            to: "n".into(),
            rule: "r".into(),
            budget: None,
        });
        let Lookup::Miss(s) =
            cache.lookup_now(&HeaderMap::new(), &req, &identity("a"), Terms::of(&d))
        else {
            panic!("expected a miss");
        };
        let (m, p): (Arc<str>, Arc<str>) = ("n".into(), "p".into());
        s.full(
            &cache,
            &d,
            Endpoint::Chat,
            &completion("x"),
            Usage::default(),
            (&m, &p),
        );
        assert_eq!(metrics.stores.get(), 0);
        store(&cache, "a", BODY, "hello");
        assert_eq!(metrics.stores.get(), 1);
        assert!(metrics.bytes.get() > OVERHEAD as i64);
        assert_eq!(metrics.entries.get(), 1);
    }
}
