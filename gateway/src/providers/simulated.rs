//! A simulated provider: deterministic text and usage, latency and failures from the policy's
//! `simulated` profile, no network and no key. What `llmgw serve` runs on out of the box.

use crate::upstream::{
    ChunkStream, Delta, ErrorClass, FullResponse, Provider, SendFuture, StreamEvent, UpstreamError,
    UpstreamRequest, UpstreamResponse, Usage,
};
use crate::wire::{content_text, estimate_tokens};
use llmgw_engine::input::Endpoint;
use llmgw_engine::model::SimulatedProfile;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest simulated answer.
const MAX_OUTPUT: u64 = 4096;

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "a",
    "model",
    "that",
    "fits",
    "its",
    "budget",
    "and",
    "latency",
    "policy",
    "while",
    "circuits",
    "guard",
    "every",
    "provider",
    "region",
    "so",
    "answers",
    "keep",
    "flowing",
    "when",
    "one",
    "upstream",
    "slows",
    "down",
    "or",
    "fails",
    "canaries",
    "move",
    "traffic",
    "step",
    "by",
    "with",
    "statistics",
    "watching",
];

/// The profile of a `simulated` provider that declares none.
pub fn default_profile() -> SimulatedProfile {
    serde_json::from_value(json!({})).expect("every profile field has a default")
}

/// A simulated provider.
pub struct Simulated {
    profile: SimulatedProfile,
}

impl Simulated {
    /// A provider behaving as `profile` says.
    pub fn new(profile: SimulatedProfile) -> Self {
        Simulated { profile }
    }

    fn ttft(&self) -> Duration {
        let base = self.profile.ttft_ms as f64;
        let jitter = if self.profile.jitter > 0.0 {
            base * self.profile.jitter * (rand::random::<f64>() * 2.0 - 1.0)
        } else {
            0.0
        };
        Duration::from_secs_f64((base + jitter).max(0.0) / 1000.0)
    }

    fn per_token(&self) -> Duration {
        if self.profile.tokens_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.profile.tokens_per_second)
        } else {
            Duration::ZERO
        }
    }

    /// A failure drawn from the profile's rates.
    fn fault(&self) -> Option<UpstreamError> {
        let roll = rand::random::<f64>();
        if roll < self.profile.rate_limit_rate {
            let mut e = UpstreamError::new(ErrorClass::RateLimited, "simulated rate limit")
                .with_status(429);
            e.retry_after = Some(Duration::from_secs(1));
            return Some(e);
        }
        if roll < self.profile.rate_limit_rate + self.profile.error_rate {
            return Some(
                UpstreamError::new(ErrorClass::Server, "simulated server error").with_status(500),
            );
        }
        None
    }
}

/// The deterministic answer to a chat request.
struct Answer {
    seed: u64,
    start: u64,
    end: u64,
    input_tokens: u64,
}

impl Answer {
    fn of(req: &UpstreamRequest<'_>, default_output: u64) -> Answer {
        let messages = req.body["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut chars = 0usize;
        let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
        for m in messages {
            let text = content_text(&m["content"]);
            chars += text.len();
            for b in text.bytes() {
                seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let max = req.body["max_completion_tokens"]
            .as_u64()
            .or_else(|| req.body["max_tokens"].as_u64())
            .unwrap_or(default_output)
            .min(MAX_OUTPUT);
        let start = req
            .prefill
            .map_or(0, |p| p.split_whitespace().count() as u64)
            .min(max);
        let prefill_chars = req.prefill.map_or(0, str::len);
        Answer {
            seed,
            start,
            end: max,
            input_tokens: estimate_tokens(chars + prefill_chars).max(1),
        }
    }

    fn word(&self, i: u64) -> String {
        let w =
            WORDS[((self.seed >> 7).wrapping_add(i.wrapping_mul(7)) % WORDS.len() as u64) as usize];
        format!("{w} ")
    }

    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.end - self.start,
        }
    }
}

impl Provider for Simulated {
    fn send<'a>(&'a self, req: UpstreamRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            if req.endpoint == Endpoint::Embeddings {
                tokio::time::sleep(self.ttft() / 4).await;
                return Ok(UpstreamResponse::Full(embeddings(&req)));
            }
            if let Some(e) = self.fault() {
                tokio::time::sleep(self.ttft() / 2).await;
                return Err(e);
            }
            let answer = Answer::of(&req, self.profile.output_tokens);
            let ttft = self.ttft();
            let per_token = self.per_token();
            if !req.stream {
                let n = (answer.end - answer.start) as u32;
                tokio::time::sleep(ttft + per_token * n).await;
                let text: String = (answer.start..answer.end).map(|i| answer.word(i)).collect();
                let usage = answer.usage();
                let body = json!({
                    "id": "chatcmpl-sim",
                    "object": "chat.completion",
                    "created": 0,
                    "model": req.upstream_model,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "finish_reason": "stop",
                    }],
                    "usage": {
                        "prompt_tokens": usage.input_tokens,
                        "completion_tokens": usage.output_tokens,
                        "total_tokens": usage.input_tokens + usage.output_tokens,
                    },
                });
                return Ok(UpstreamResponse::Full(FullResponse { body, usage }));
            }
            let (tx, stream) = ChunkStream::channel();
            tokio::spawn(async move {
                tokio::time::sleep(ttft).await;
                for i in answer.start..answer.end {
                    if i > answer.start && !per_token.is_zero() {
                        tokio::time::sleep(per_token).await;
                    }
                    let delta = Delta {
                        content: Some(answer.word(i)),
                        ..Delta::default()
                    };
                    if tx.send(Ok(StreamEvent::Delta(delta))).await.is_err() {
                        return;
                    }
                }
                let last = [
                    StreamEvent::Delta(Delta {
                        finish_reason: Some("stop".into()),
                        ..Delta::default()
                    }),
                    StreamEvent::Usage(answer.usage()),
                    StreamEvent::Done,
                ];
                for ev in last {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(UpstreamResponse::Stream(stream))
        })
    }
}

fn embeddings(req: &UpstreamRequest<'_>) -> FullResponse {
    let inputs: Vec<String> = match &req.body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => vec![],
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += estimate_tokens(text.len()).max(1);
            let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            let raw: Vec<f64> = (0..16u64)
                .map(|k| {
                    let x = h.rotate_left((k * 4) as u32) ^ k.wrapping_mul(0x2545_f491_4f6c_dd1d);
                    (x % 2000) as f64 / 1000.0 - 1.0
                })
                .collect();
            let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
            let v: Vec<f64> = raw.iter().map(|x| x / norm).collect();
            json!({ "object": "embedding", "index": i, "embedding": v })
        })
        .collect();
    let usage = Usage {
        input_tokens: tokens,
        output_tokens: 0,
    };
    FullResponse {
        body: json!({
            "object": "list",
            "data": data,
            "model": req.upstream_model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_deterministically_and_continues_a_prefill() {
        let mut profile = default_profile();
        profile.ttft_ms = 0;
        profile.tokens_per_second = 0.0;
        let sim = Simulated::new(profile);
        let body = json!({ "model": "m", "max_tokens": 6, "messages": [{ "role": "user", "content": "hello" }] });
        let req = UpstreamRequest {
            endpoint: Endpoint::Chat,
            body: &body,
            upstream_model: "sim",
            prefill: None,
            stream: false,
            max_output_tokens: None,
            traceparent: None,
            quota: None,
        };
        let Ok(UpstreamResponse::Full(a)) = sim.send(req).await else {
            panic!("full answer")
        };
        let Ok(UpstreamResponse::Full(b)) = sim.send(req).await else {
            panic!("full answer")
        };
        assert_eq!(
            a.body["choices"][0]["message"],
            b.body["choices"][0]["message"]
        );
        assert_eq!(a.usage.output_tokens, 6);
        let text = a.body["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .to_owned();
        let head: String = text.split_inclusive(' ').take(2).collect();
        let tail: String = text.split_inclusive(' ').skip(2).collect();
        let req = UpstreamRequest {
            prefill: Some(&head),
            stream: true,
            ..req
        };
        let Ok(UpstreamResponse::Stream(mut s)) = sim.send(req).await else {
            panic!("stream")
        };
        let mut rest = String::new();
        while let Some(Ok(ev)) = s.next().await {
            match ev {
                StreamEvent::Delta(d) => rest.push_str(d.content.as_deref().unwrap_or("")),
                StreamEvent::Done => break,
                StreamEvent::Usage(u) => assert_eq!(u.output_tokens, 4),
                StreamEvent::Malformed(why) => panic!("{why}"),
            }
        }
        assert_eq!(rest, tail);
    }
}
