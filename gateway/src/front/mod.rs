//! The front doors: the API shapes clients speak. Every request is translated into the one
//! internal form (an OpenAI chat or embeddings body, [`crate::wire::ClientRequest`]) and goes
//! through the same policy path whatever door it came in by and whatever upstream serves it;
//! the answer (an OpenAI-shaped completion, or a stream of [`Delta`]s) is written back in the
//! door's shape.
//!
//! - OpenAI: `POST /v1/chat/completions`, `POST /v1/embeddings` ([`chat`]).
//! - Anthropic Messages: `POST /v1/messages` ([`messages`]).

pub mod chat;
pub mod messages;

use crate::cache::Hit;
use crate::error::ApiError;
use crate::upstream::{Delta, Usage};
use crate::wire::{self, ClientRequest};
use bytes::Bytes;
use chat::ChatStream;
use llmgw_engine::input::Endpoint;
use messages::MessagesStream;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The door a request came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// OpenAI chat completions and embeddings.
    OpenAi,
    /// Anthropic Messages.
    Messages,
}

impl Door {
    /// An error body in the door's shape.
    pub fn error_body(self, err: &ApiError) -> Value {
        match self {
            Door::OpenAi => err.body(),
            Door::Messages => messages::error_body(err),
        }
    }

    /// The id of the answer to request `request_id`, as the door names answers.
    pub fn answer_id(self, request_id: &str) -> String {
        match self {
            Door::OpenAi => format!("chatcmpl-{request_id}"),
            Door::Messages => format!("msg_{request_id}"),
        }
    }

    /// Validates a request body and translates it to the internal form; `meta` are the
    /// `x-llmgw-meta-*` headers.
    pub fn parse(
        self,
        endpoint: Endpoint,
        bytes: &[u8],
        meta: BTreeMap<String, String>,
    ) -> Result<ClientRequest, ApiError> {
        match self {
            Door::OpenAi => wire::parse(endpoint, bytes, meta),
            Door::Messages => {
                let chat = messages::to_chat(&wire::parse_json(bytes)?, false)?;
                wire::parse_value(Endpoint::Chat, chat, meta)
            }
        }
    }

    /// A whole answer in the door's shape, for the OpenAI-shaped `completion` (its `model`
    /// set to the model that served).
    pub fn full(self, completion: Value, request_id: &str) -> Value {
        match self {
            Door::OpenAi => completion,
            Door::Messages => messages::message(&completion, &self.answer_id(request_id)),
        }
    }

    /// A cached answer in the door's shape: a JSON body or (`stream`) the whole stream.
    pub fn cached(
        self,
        hit: &Hit,
        request: &ClientRequest,
        request_id: &str,
        created: u64,
    ) -> Bytes {
        let id = self.answer_id(request_id);
        let stream = request.facts.stream;
        if self == Door::OpenAi {
            return hit.body(&id, created, stream, request.include_usage);
        }
        let (deltas, usage) = hit.replay();
        if !stream {
            let completion: Value =
                serde_json::from_slice(&hit.body(&id, created, false, false)).unwrap_or_default();
            return Bytes::from(self.full(completion, request_id).to_string());
        }
        let mut out = StreamOut::new(self, request, request_id, created, hit.model().into());
        let mut bytes = Vec::new();
        for d in &deltas {
            bytes.extend_from_slice(&out.delta(d));
        }
        bytes.extend_from_slice(&out.end(usage, "0"));
        Bytes::from(bytes)
    }
}

/// The SSE comment that carries the real cost of a stream at its end.
pub fn cost_comment(cost: &str) -> String {
    format!(": x-llmgw-cost-usd={cost}\n\n")
}

/// Writes a streamed answer in a door's shape.
pub enum StreamOut {
    /// OpenAI chat chunks; whether the client asked for the usage chunk.
    Chat(ChatStream, bool),
    /// Anthropic Messages events.
    Messages(MessagesStream),
}

impl StreamOut {
    /// The writer of the answer to `request` (request id `request_id`) by `model`.
    pub fn new(
        door: Door,
        request: &ClientRequest,
        request_id: &str,
        created: u64,
        model: Arc<str>,
    ) -> Self {
        let id = door.answer_id(request_id);
        match door {
            Door::OpenAi => {
                StreamOut::Chat(ChatStream::new(id, created, model), request.include_usage)
            }
            Door::Messages => {
                StreamOut::Messages(MessagesStream::new(id, &model, request.facts.input_tokens))
            }
        }
    }

    /// The model named from now on (after a resume elsewhere), where the door names it per
    /// event.
    pub fn set_model(&mut self, model: Arc<str>) {
        if let StreamOut::Chat(c, _) = self {
            c.set_model(model);
        }
    }

    /// The events of one piece of the answer.
    pub fn delta(&mut self, d: &Delta) -> Bytes {
        match self {
            StreamOut::Chat(c, _) => c.delta(d),
            StreamOut::Messages(m) => m.delta(d),
        }
    }

    /// The end of a complete answer: `usage` is what the client received, `cost` the real
    /// cost (formatted).
    pub fn end(&mut self, usage: Usage, cost: &str) -> Bytes {
        match self {
            StreamOut::Chat(c, include) => c.end(usage, *include, cost),
            StreamOut::Messages(m) => m.end(usage, cost),
        }
    }

    /// The in-band error that ends a broken stream.
    pub fn error(&self, message: &str) -> Bytes {
        match self {
            StreamOut::Chat(..) => ChatStream::error(message),
            StreamOut::Messages(_) => MessagesStream::error(message),
        }
    }
}
