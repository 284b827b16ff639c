//! The HTTP server: the API listener and the admin listener, each with HTTP/1.1 and h2c on
//! one port, header-read and idle timeouts, a limit on the request head, and a graceful
//! shutdown that stops accepting on both, lets in-flight requests finish and then returns.

use crate::app::App;
use crate::body::GatewayBody;
use crate::error::ApiError;
use crate::routes;
use http::StatusCode;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request head (request line and header fields) answered normally; a larger one gets
/// 431 with an OpenAI error body.
const MAX_HEAD_BYTES: usize = 32 << 10;

/// hyper's read buffer: a request head that does not fit gets hyper's own 431 (empty body).
const MAX_BUF_BYTES: usize = 256 << 10;

/// Activity of one connection: whether a request ever arrived, requests whose response is
/// not finished, and the last change.
#[derive(Default)]
struct ConnActivity {
    used: AtomicBool,
    active: AtomicUsize,
    last_ms: AtomicU64,
}

/// Held by a response body until it is sent.
struct ActiveRequest(Arc<ConnActivity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0
            .last_ms
            .store(crate::live::now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The OpenAI-compatible API and the health checks ([`routes::route`]).
    Api,
    /// The operator API: metrics, `/admin/…` and the health checks
    /// ([`crate::admin_routes::route`]).
    Admin,
}

impl Surface {
    async fn route(self, app: Arc<App>, req: Request<Incoming>) -> http::Response<GatewayBody> {
        match self {
            Surface::Api => routes::route(app, req).await,
            Surface::Admin => crate::admin_routes::route(app, req).await,
        }
    }
}

/// Open connections of every listener, for the drain at shutdown.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    closed: tokio::sync::Notify,
}

/// Serves the API on `api` and the operator API on `admin` until `shutdown` resolves, then
/// stops accepting on both and drains connections for at most the app's grace period.
pub async fn serve(
    api: TcpListener,
    admin: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Arc::new(Connections::default());
    let refresher = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                app.refresh();
            }
        })
    };
    let prober = app.store_health.spawn(app.state.clone());
    let health_probes = crate::health::spawn(app.clone());
    let history = crate::dashboard::history::spawn(app.clone());
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    {
        // Dropping the accept loops closes both listeners.
        let accepting = async {
            tokio::join!(
                accept(api, Surface::Api, &app, &builder, &conns, &stop_rx),
                accept(admin, Surface::Admin, &app, &builder, &conns, &stop_rx),
            )
        };
        tokio::select! {
            _ = shutdown => {}
            _ = accepting => {}
        }
    }
    app.start_draining();
    health_probes.abort();
    history.abort();
    let _ = stop_tx.send(true);
    let grace = app.limits.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while conns.open.load(Ordering::SeqCst) > 0 {
            conns.closed.notified().await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            target: "llmgw::server",
            open = conns.open.load(Ordering::SeqCst),
            "shutdown grace period ended with connections still open"
        );
    }
    refresher.abort();
    prober.abort();
}

/// Accepts connections on `listener` and serves each on its own task with `surface`'s
/// routes; never returns.
async fn accept(
    listener: TcpListener,
    surface: Surface,
    app: &Arc<App>,
    builder: &Arc<Builder<TokioExecutor>>,
    conns: &Arc<Connections>,
    stop_rx: &watch::Receiver<bool>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(target: "llmgw::server", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        conns.open.fetch_add(1, Ordering::SeqCst);
        let conn_guard = OpenConn(conns.clone());
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let idle_limit = app.limits.idle_timeout;
        let first_request_limit = app.limits.header_read_timeout;
        tokio::spawn(async move {
            let _conn_guard = conn_guard;
            let activity = Arc::new(ConnActivity::default());
            activity
                .last_ms
                .store(crate::live::now_ms(), Ordering::Relaxed);
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let app = app.clone();
                    let activity = activity.clone();
                    async move {
                        activity.used.store(true, Ordering::Relaxed);
                        activity.active.fetch_add(1, Ordering::Relaxed);
                        let guard = ActiveRequest(activity);
                        let closes = req.version() < http::Version::HTTP_2;
                        let mut resp = match oversized_head(&req) {
                            Some(e) => routes::error(&e),
                            None => surface.route(app, req).await,
                        };
                        if closes && ends_connection(resp.status()) {
                            resp.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, Infallible>(
                            resp.map(|b: GatewayBody| b.with_guard(Box::new(guard))),
                        )
                    }
                })
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let accepted_ms = crate::live::now_ms();
            let mut tick = tokio::time::interval(
                Duration::from_millis(500)
                    .min(idle_limit)
                    .min(first_request_limit)
                    .max(Duration::from_millis(1)),
            );
            let mut shutting = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    changed = stop.changed(), if !shutting => {
                        let _ = changed;
                        shutting = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tick.tick(), if !shutting => {
                        // A connection that never completed a request head (silent, or still
                        // before the HTTP version is known) is closed at the header-read
                        // timeout; nothing is in flight on it.
                        let waited = crate::live::now_ms().saturating_sub(accepted_ms);
                        if !activity.used.load(Ordering::Relaxed)
                            && waited >= first_request_limit.as_millis() as u64
                        {
                            break;
                        }
                        let idle_for = crate::live::now_ms().saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                        if activity.active.load(Ordering::Relaxed) == 0 && idle_for >= idle_limit.as_millis() as u64 {
                            shutting = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
}

/// 431 for a request head over [`MAX_HEAD_BYTES`].
fn oversized_head<B>(req: &Request<B>) -> Option<ApiError> {
    let uri = req.uri();
    let size = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    (size > MAX_HEAD_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "request_header_fields_too_large",
            format!("the request headers take {size} bytes; at most {MAX_HEAD_BYTES} are accepted"),
        )
    })
}

/// Whether an HTTP/1 connection is closed after this answer: the request may not have been
/// read to its end (timeout, oversized head), so the connection's framing cannot be trusted.
fn ends_connection(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    )
}

struct OpenConn(Arc<Connections>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}
