//! The shared tier of the response cache: with `--state redis://…`, answers live in that Redis,
//! so every replica serves what any of them stored.
//!
//! Keys, under the state store's prefix, name the tenant in braces (in a Redis Cluster a
//! tenant's keys then share a slot, which the insertion script needs):
//!
//! - `cache:{TENANT}:e:DIGEST`: an answer (JSON), which Redis expires after the rule's TTL;
//! - `cache:{TENANT}:n:BUCKET`: the near-duplicate index of a bucket ([`super::key::near`]),
//!   a list of its [`BUCKET_CAP`] most recent final user turns (the digest of the answer, the
//!   turn's vector and its facts), expiring with the newest of them;
//! - `cache:{TENANT}:z`: the tenant's answers and buckets, scored by expiry (milliseconds of
//!   the Redis clock): the size bound. Storing drops the expired members, then those nearest
//!   their expiry beyond `--cache-tenant-entries`, deleting their keys.
//!
//! An exact lookup is one round trip (a `GET`, pipelined with the bucket's `LRANGE` when the
//! rule matches near duplicates); a near-duplicate hit takes a second, an `MGET` of the best
//! candidates. The candidates are scored here, brute force over at most [`BUCKET_CAP`]
//! vectors. Storing is one script, sent in the background once the answer is complete.
//!
//! The cache never fails a request: an operation is bounded by [`LIMIT`], a failure or a
//! timeout is a miss (counted in `llmgw_cache_errors_total`), and while the state store probe
//! finds Redis unavailable the cache is not used at all.

use super::answer::{Answer, Body, Chat};
use super::key::Digest;
use super::similar::{Prompt, BUCKET_CAP};
use super::{CacheMetrics, EvictionLabels, Hit};
use crate::store::{RedisStore, StoreHealth};
use crate::upstream::Usage;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest a shared cache operation may take; a lookup that takes longer is a miss.
pub const LIMIT: Duration = Duration::from_millis(250);

/// The default of `--cache-tenant-entries`.
pub const DEFAULT_TENANT_ENTRIES: u64 = 10_000;

/// Near-duplicate candidates fetched after scoring, most similar first.
const CANDIDATES: usize = 4;

/// Stores an answer and enforces the tenant's bound. KEYS: the answer, the tenant's sorted set
/// and, when the answer is indexed, its bucket. ARGV: the answer, its TTL in milliseconds, the
/// tenant's bound, and when indexed the bucket's item and the bucket's bound. Returns how many
/// members the bound removed.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[2])
        local function stretch(key)
          if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
        redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
        if KEYS[3] then
          redis.call('LPUSH', KEYS[3], ARGV[4])
          redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
          stretch(KEYS[3])
          local s = redis.call('ZSCORE', KEYS[2], KEYS[3])
          if not s or tonumber(s) < now + ttl then
            redis.call('ZADD', KEYS[2], now + ttl, KEYS[3])
          end
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
        if over > 0 then
          local gone = redis.call('ZPOPMIN', KEYS[2], over)
          for i = 1, #gone, 2 do redis.call('DEL', gone[i]) end
        else
          over = 0
        end
        stretch(KEYS[2])
        return over
        ",
    )
});

/// An answer as stored in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    tenant: String,
    model: String,
    provider: String,
    input_tokens: u64,
    output_tokens: u64,
    /// When it was stored, milliseconds since the epoch (the storing replica's clock).
    stored_ms: u64,
    #[serde(flatten)]
    body: StoredBody,
}

/// What a stored answer says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredBody {
    Chat {
        content: Option<String>,
        tool_calls: Vec<Value>,
        finish_reason: String,
    },
    Embeddings {
        body: String,
    },
}

/// An item of a bucket's list: the digest of an answer and the final user turn it answered.
#[derive(Debug, Serialize, Deserialize)]
struct Indexed {
    key: String,
    prompt: Prompt,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Stored {
    fn of(tenant: &str, a: &Answer) -> Stored {
        let body = match &a.body {
            Body::Chat(c) => StoredBody::Chat {
                content: c.content.clone(),
                tool_calls: c.tool_calls.clone(),
                finish_reason: c.finish_reason.clone(),
            },
            Body::Embeddings(b) => StoredBody::Embeddings {
                body: String::from_utf8_lossy(b).into_owned(),
            },
        };
        Stored {
            tenant: tenant.to_owned(),
            model: a.model.to_string(),
            provider: a.provider.to_string(),
            input_tokens: a.usage.input_tokens,
            output_tokens: a.usage.output_tokens,
            stored_ms: now_ms(),
            body,
        }
    }

    /// The hit this answer is for `tenant`; `None` for another tenant's.
    fn hit(self, tenant: &str, similarity: Option<f32>) -> Option<Hit> {
        if self.tenant != tenant {
            return None;
        }
        let body = match self.body {
            StoredBody::Chat {
                content,
                tool_calls,
                finish_reason,
            } => Body::Chat(Chat {
                content,
                tool_calls,
                finish_reason,
            }),
            StoredBody::Embeddings { body } => Body::Embeddings(body.into()),
        };
        let age = Duration::from_millis(now_ms().saturating_sub(self.stored_ms));
        let now = Instant::now();
        let entry = super::Entry {
            id: 0,
            tenant: self.tenant.into(),
            answer: Answer {
                model: self.model.into(),
                provider: self.provider.into(),
                usage: Usage {
                    input_tokens: self.input_tokens,
                    output_tokens: self.output_tokens,
                },
                body,
            },
            ttl: Duration::ZERO,
            stored: now.checked_sub(age).unwrap_or(now),
            near: None,
            weight: 0,
        };
        Some(Hit {
            entry: Arc::new(entry),
            similarity,
        })
    }
}

/// The response cache's tier in Redis.
#[derive(Clone)]
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    health: StoreHealth,
    tenant_entries: u64,
    metrics: CacheMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("tenant_entries", &self.tenant_entries)
            .finish()
    }
}

impl Shared {
    /// The tier in the Redis of `store`, used while `health` finds it available; each tenant
    /// keeps at most `tenant_entries` answers and buckets.
    pub fn new(
        store: &RedisStore,
        health: StoreHealth,
        tenant_entries: u64,
        metrics: CacheMetrics,
    ) -> Shared {
        Shared {
            conn: store.connection(),
            prefix: store.prefix().to_owned(),
            health,
            tenant_entries: tenant_entries.max(1),
            metrics,
        }
    }

    fn key(&self, tenant: &str, kind: &str, digest: &str) -> String {
        format!("{}cache:{{{tenant}}}:{kind}:{digest}", self.prefix)
    }

    fn set_key(&self, tenant: &str) -> String {
        format!("{}cache:{{{tenant}}}:z", self.prefix)
    }

    /// Whether the store is usable now; an operation skipped because it is not counts as an
    /// error.
    fn usable(&self) -> bool {
        let usable = self.health.fault().is_none();
        if !usable {
            self.metrics.errors.inc();
        }
        usable
    }

    fn failed(&self, doing: &str, error: &dyn std::fmt::Display) {
        self.metrics.errors.inc();
        tracing::warn!(target: "llmgw::cache", error = %error, "the shared response cache failed {doing}; a miss");
    }

    /// The answer cached for `digest` of `tenant`, else (with `near`: the bucket, the final
    /// user turn and the threshold) the most similar turn's of its bucket. A failure is a miss.
    pub async fn lookup(
        &self,
        tenant: &str,
        digest: &Digest,
        near: Option<(&Digest, &Prompt, f64)>,
    ) -> Option<Hit> {
        if !self.usable() {
            return None;
        }
        match tokio::time::timeout(LIMIT, self.fetch(tenant, digest, near)).await {
            Ok(Ok(hit)) => hit,
            Ok(Err(e)) => {
                self.failed("a lookup", &e);
                None
            }
            Err(_) => {
                self.failed(
                    "a lookup",
                    &format!("no answer within {} ms", LIMIT.as_millis()),
                );
                None
            }
        }
    }

    async fn fetch(
        &self,
        tenant: &str,
        digest: &Digest,
        near: Option<(&Digest, &Prompt, f64)>,
    ) -> Result<Option<Hit>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let key = self.key(tenant, "e", &hex::encode(digest));
        let (value, slots): (Option<String>, Vec<String>) = match near {
            Some((bucket, _, _)) => {
                redis::pipe()
                    .get(&key)
                    .lrange(self.key(tenant, "n", &hex::encode(bucket)), 0, -1)
                    .query_async(&mut conn)
                    .await?
            }
            None => (conn.get(&key).await?, Vec::new()),
        };
        let decode = |v: &str| serde_json::from_str::<Stored>(v).ok();
        if let Some(hit) = value
            .as_deref()
            .and_then(decode)
            .and_then(|s| s.hit(tenant, None))
        {
            return Ok(Some(hit));
        }
        let Some((_, prompt, threshold)) = near else {
            return Ok(None);
        };
        let dense = prompt.vector.dense();
        let mut scored: Vec<(f32, String)> = slots
            .iter()
            .filter_map(|s| serde_json::from_str::<Indexed>(s).ok())
            .filter(|s| s.prompt.facts == prompt.facts)
            .map(|s| (s.prompt.vector.cosine(&dense), s.key))
            .filter(|(sim, _)| f64::from(*sim) >= threshold - 1e-6)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut seen = HashSet::new();
        scored.retain(|(_, k)| seen.insert(k.clone()));
        scored.truncate(CANDIDATES);
        if scored.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = scored
            .iter()
            .map(|(_, d)| self.key(tenant, "e", d))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(scored
            .iter()
            .zip(values)
            .find_map(|((sim, _), v)| decode(v.as_deref()?)?.hit(tenant, Some(sim.min(1.0)))))
    }

    /// Stores an answer of `tenant` for `ttl`, indexed in its near-duplicate bucket when
    /// `near` is set; in the background (returns at once). A failure is logged and counted.
    pub fn insert(
        &self,
        tenant: &str,
        digest: &Digest,
        near: Option<(&Digest, &Prompt)>,
        ttl: Duration,
        answer: &Answer,
    ) {
        if !self.usable() {
            return;
        }
        let value = match serde_json::to_string(&Stored::of(tenant, answer)) {
            Ok(v) => v,
            Err(e) => return self.failed("to encode an answer", &e),
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut inv = INSERT.prepare_invoke();
        inv.key(self.key(tenant, "e", &hex::encode(digest)))
            .key(self.set_key(tenant))
            .arg(value)
            .arg(ttl_ms)
            .arg(self.tenant_entries);
        if let Some((bucket, prompt)) = near {
            let item = Indexed {
                key: hex::encode(digest),
                prompt: prompt.clone(),
            };
            match serde_json::to_string(&item) {
                Ok(item) => {
                    inv.key(self.key(tenant, "n", &hex::encode(bucket)))
                        .arg(item)
                        .arg(BUCKET_CAP);
                }
                Err(e) => return self.failed("to encode a prompt", &e),
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut conn = this.conn.clone();
            match tokio::time::timeout(LIMIT, inv.invoke_async::<u64>(&mut conn)).await {
                Ok(Ok(evicted)) => {
                    this.metrics.stores.inc();
                    if evicted > 0 {
                        this.metrics
                            .evictions
                            .get_or_create(&EvictionLabels { cause: "size" })
                            .inc_by(evicted);
                    }
                }
                Ok(Err(e)) => this.failed("to store an answer", &e),
                Err(_) => this.failed(
                    "to store an answer",
                    &format!("no answer within {} ms", LIMIT.as_millis()),
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            model: "m".into(),
            provider: "p".into(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 5,
            },
            body: Body::Chat(Chat {
                content: Some("hello".into()),
                tool_calls: vec![serde_json::json!({ "id": "c1", "type": "function",
                    "function": { "name": "f", "arguments": "{}" } })],
                finish_reason: "tool_calls".into(),
            }),
        }
    }

    fn read_back(tenant: &str, a: &Answer) -> Stored {
        let text = serde_json::to_string(&Stored::of(tenant, a)).expect("encodes");
        serde_json::from_str(&text).expect("decodes")
    }

    #[test]
    fn a_stored_answer_reads_back_whole_for_its_tenant_only() {
        let a = answer();
        let hit = read_back("acme", &a)
            .hit("acme", None)
            .expect("its tenant's");
        assert_eq!((hit.model(), hit.provider()), ("m", "p"));
        assert_eq!(hit.replay().1, a.usage);
        assert_eq!(
            hit.body("id", 1, false, false),
            chat_of(&a).completion("id", 1, "m", a.usage)
        );
        assert!(hit.age() < Duration::from_secs(60));
        assert!(read_back("acme", &a).hit("globex", None).is_none());
        let emb = Answer {
            body: Body::Embeddings(r#"{"data":[]}"#.into()),
            ..answer()
        };
        let hit = read_back("acme", &emb)
            .hit("acme", Some(0.95))
            .expect("hit");
        assert_eq!(hit.body("id", 1, false, false), r#"{"data":[]}"#);
        assert_eq!(hit.outcome(), "near_hit");
    }

    fn chat_of(a: &Answer) -> &Chat {
        match &a.body {
            Body::Chat(c) => c,
            Body::Embeddings(_) => panic!("a chat answer"),
        }
    }

    #[test]
    fn an_indexed_prompt_reads_back_with_the_same_similarity_and_facts() {
        let p = Prompt::of("Translate this email into French: see you on Monday");
        let q = Prompt::of("translate this email into French: see you on monday!");
        let item = Indexed {
            key: hex::encode([7u8; 32]),
            prompt: p.clone(),
        };
        let text = serde_json::to_string(&item).expect("encodes");
        let back: Indexed = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back.prompt, p);
        let dense = q.vector.dense();
        assert_eq!(back.prompt.vector.cosine(&dense), p.vector.cosine(&dense));
        // A vector naming a dimension out of range (a corrupted value) scores, never panics.
        let bad = text.replacen("\"dims\":[", "\"dims\":[65535,", 1);
        let bad = bad.replacen("\"weights\":[", "\"weights\":[1.0,", 1);
        assert!(bad.contains("[65535,") && bad.contains("[1.0,"), "{bad}");
        let bad: Indexed = serde_json::from_str(&bad).expect("decodes");
        assert!(bad.prompt.vector.cosine(&dense).is_finite());
    }
}
