//! A server-sent events parser that is fed bytes as they arrive.

use bytes::{Buf, BytesMut};

/// One event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event name.
    pub event: Option<String>,
    /// The data.
    pub data: String,
}

/// Longest line accepted before the stream is considered malformed.
const MAX_LINE: usize = 4 << 20;

/// An SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    event: Option<String>,
    data: Option<String>,
}

/// The stream is not SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed server-sent events: {0}")]
pub struct SseError(pub &'static str);

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line = self.buf.split_to(pos + 1);
            line.truncate(pos);
            if line.last() == Some(&b'\r') {
                line.truncate(pos - 1);
            }
            let line = std::str::from_utf8(&line).map_err(|_| SseError("invalid UTF-8"))?;
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseEvent {
                        event: self.event.take(),
                        data,
                    });
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                "event" => self.event = Some(value.to_owned()),
                _ => {}
            }
        }
        if self.buf.len() > MAX_LINE {
            self.buf.advance(self.buf.len());
            return Err(SseError("line too long"));
        }
        Ok(out)
    }

    /// The event left when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let _ = self.feed(&rest);
            let _ = self.feed(b"\n");
        }
        self.data.take().map(|data| SseEvent {
            event: self.event.take(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: message_start\nda").expect("ok").is_empty());
        let ev = p
            .feed(b"ta: {\"a\":1}\r\n\r\n: comment\ndata: [DONE]\n\n")
            .expect("ok");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event.as_deref(), Some("message_start"));
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].data, "[DONE]");
        assert!(p.feed(b"data: tail").expect("ok").is_empty());
        assert_eq!(p.finish().map(|e| e.data), Some("tail".to_owned()));
    }
}
