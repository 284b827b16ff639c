//! The response body the gateway sends: a whole buffer or a channel of SSE bytes.
//!
//! Either form can hold a guard that lives as long as the body is being sent, which is how
//! connections know a streamed response is still in flight (idle timeout, graceful drain).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Something dropped when the response body is finished or abandoned.
pub type Guard = Box<dyn Send + Sync>;

/// A response body.
pub struct GatewayBody {
    kind: Kind,
    _guard: Option<Guard>,
}

enum Kind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl GatewayBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody {
            kind: Kind::Full(Some(bytes.into())),
            _guard: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        GatewayBody {
            kind: Kind::Full(None),
            _guard: None,
        }
    }

    /// A body that streams what is sent on the returned sender, ending when it is dropped.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            tx,
            GatewayBody {
                kind: Kind::Channel(rx),
                _guard: None,
            },
        )
    }

    /// Keeps `guard` alive until the body is done.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(None) = frame {
            this._guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Channel(_) => SizeHint::default(),
        }
    }
}
