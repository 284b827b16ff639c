//! The front doors: the API shapes clients speak. Every request is translated into the one
//! internal form (an OpenAI chat or embeddings body, [`crate::wire::ClientRequest`]) and goes
//! through the same policy path whatever door it came in by and whatever upstream serves it;
//! the answer (an OpenAI-shaped completion, or a stream of [`Delta`]s) is written back in the
//! door's shape.
//!
//! - OpenAI: `POST /v1/chat/completions`, `POST /v1/embeddings` ([`chat`]).
//! - Anthropic Messages: `POST /v1/messages` ([`messages`]).
//! - OpenAI Responses: `POST /v1/responses` ([`responses`]).

pub mod chat;
pub mod messages;
pub mod responses;

use crate::app::App;
use crate::cache::Hit;
use crate::error::ApiError;
use crate::upstream::{Delta, Usage};
use crate::wire::{self, ClientRequest};
use bytes::Bytes;
use chat::ChatStream;
use llmgw_engine::input::Endpoint;
use messages::MessagesStream;
use responses::{ResponsesStream, Turn};
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
    /// OpenAI Responses.
    Responses,
}

impl Door {
    /// The door's name in the request log.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::OpenAi => "openai",
            Door::Messages => "anthropic_messages",
            Door::Responses => "openai_responses",
        }
    }

    /// An error body in the door's shape.
    pub fn error_body(self, err: &ApiError) -> Value {
        match self {
            Door::OpenAi | Door::Responses => err.body(),
            Door::Messages => messages::error_body(err),
        }
    }

    /// The id of the answer to request `request_id`, as the door names answers.
    pub fn answer_id(self, request_id: &str) -> String {
        match self {
            Door::OpenAi => format!("chatcmpl-{request_id}"),
            Door::Messages => format!("msg_{request_id}"),
            Door::Responses => format!("resp_{request_id}"),
        }
    }

    /// Validates a request body of `tenant` and translates it to the internal form, with the
    /// turn of a Responses request (whose `previous_response_id` is looked up in the state
    /// store); `meta` are the `x-llmgw-meta-*` headers.
    pub async fn parse(
        self,
        app: &App,
        tenant: &str,
        request_id: &str,
        endpoint: Endpoint,
        bytes: &[u8],
        meta: BTreeMap<String, String>,
    ) -> Result<(ClientRequest, Option<Turn>), ApiError> {
        match self {
            Door::OpenAi => Ok((wire::parse(endpoint, bytes, meta)?, None)),
            Door::Messages => {
                let chat = messages::to_chat(&wire::parse_json(bytes)?, false)?;
                Ok((wire::parse_value(Endpoint::Chat, chat, meta)?, None))
            }
            Door::Responses => {
                let id = self.answer_id(request_id);
                let body = wire::parse_json(bytes)?;
                let (chat, turn) = responses::to_chat(app, tenant, &id, &body).await?;
                Ok((wire::parse_value(Endpoint::Chat, chat, meta)?, Some(turn)))
            }
        }
    }

    /// A whole answer in the door's shape, for the OpenAI-shaped `completion` (its `model`
    /// set to the model that served); `turn` is the Responses request's.
    pub fn full(self, completion: Value, request_id: &str, turn: Option<&Turn>) -> Value {
        match (self, turn) {
            (Door::Messages, _) => messages::message(&completion, &self.answer_id(request_id)),
            (Door::Responses, Some(t)) => t.response(&completion),
            _ => completion,
        }
    }

    /// A cached answer in the door's shape: a JSON body or (`stream`) the whole stream, and for
    /// a Responses request the finished response.
    pub fn cached(
        self,
        hit: &Hit,
        request: &ClientRequest,
        request_id: &str,
        created: u64,
        turn: Option<&Turn>,
    ) -> (Bytes, Option<Value>) {
        let id = self.answer_id(request_id);
        let stream = request.facts.stream;
        if self == Door::OpenAi {
            return (hit.body(&id, created, stream, request.include_usage), None);
        }
        if !stream {
            let completion: Value =
                serde_json::from_slice(&hit.body(&id, created, false, false)).unwrap_or_default();
            let body = self.full(completion, request_id, turn);
            let bytes = Bytes::from(body.to_string());
            return (bytes, turn.map(|_| body));
        }
        let (deltas, usage) = hit.replay();
        let model = hit.model().into();
        let mut out = StreamOut::new(self, request, request_id, created, model, turn.cloned());
        let mut bytes = Vec::new();
        for d in &deltas {
            bytes.extend_from_slice(&out.delta(d));
        }
        bytes.extend_from_slice(&out.end(usage, "0"));
        let finished = out.finished().map(|(_, r)| r.clone());
        (Bytes::from(bytes), finished)
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
    /// OpenAI Responses events.
    Responses(Box<ResponsesStream>),
}

impl StreamOut {
    /// The writer of the answer to `request` (request id `request_id`, Responses turn `turn`)
    /// by `model`.
    pub fn new(
        door: Door,
        request: &ClientRequest,
        request_id: &str,
        created: u64,
        model: Arc<str>,
        turn: Option<Turn>,
    ) -> Self {
        let id = door.answer_id(request_id);
        match (door, turn) {
            (Door::Messages, _) => {
                StreamOut::Messages(MessagesStream::new(id, &model, request.facts.input_tokens))
            }
            (Door::Responses, Some(t)) => {
                StreamOut::Responses(Box::new(ResponsesStream::new(t, &model)))
            }
            _ => StreamOut::Chat(ChatStream::new(id, created, model), request.include_usage),
        }
    }

    /// The turn and the finished response of a completed Responses stream.
    pub fn finished(&self) -> Option<(&Turn, &Value)> {
        match self {
            StreamOut::Responses(r) => r.finished(),
            _ => None,
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
            StreamOut::Responses(r) => r.delta(d),
        }
    }

    /// The end of a complete answer: `usage` is what the client received, `cost` the real
    /// cost (formatted).
    pub fn end(&mut self, usage: Usage, cost: &str) -> Bytes {
        match self {
            StreamOut::Chat(c, include) => c.end(usage, *include, cost),
            StreamOut::Messages(m) => m.end(usage, cost),
            StreamOut::Responses(r) => r.end(usage, cost),
        }
    }

    /// The in-band error that ends a broken stream.
    pub fn error(&mut self, message: &str) -> Bytes {
        match self {
            StreamOut::Chat(..) => ChatStream::error(message),
            StreamOut::Messages(_) => MessagesStream::error(message),
            StreamOut::Responses(r) => r.error(message),
        }
    }
}
