//! The accept loop and what each connection may hold: a request head must arrive within
//! the header timeout, an idle keep-alive connection closes after the keep-alive
//! timeout, and open connections are capped below the process's file limit.
//!
//! `axum::serve` sets none of these (hyper's own header timer needs a timer it is not
//! given, and hyper starts that clock while a keep-alive connection idles, so it cannot
//! tell a slow head from an idle connection). Here each connection carries a phase —
//! idle since, reading a head since, or busy with requests — that a per-connection
//! watchdog holds against the two timeouts. The head clock starts at the first byte of a
//! request, so the idle timeout can sit above a proxy's upstream keep-alive (nginx: 60 s)
//! while the head timeout stays short.
//!
//! At the connection cap, and when `accept` fails for lack of file descriptors, the
//! connection that has waited longest without a request in service is closed to make
//! room (a slow-loris client holds only such connections), and a failing `accept` backs
//! off instead of spinning. A new connection that finds every slot busy is closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

/// What a connection may hold, from the serve flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the first byte of a request to its complete head.
    pub header_read_timeout: Duration,
    /// Between requests on a keep-alive connection.
    pub keep_alive_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
}

/// File descriptors kept free for everything but client connections (model files,
/// logs, the tokenizer, sockets the process opens itself).
const RESERVED_FDS: u64 = 64;

/// Connections closed each time `accept` finds no descriptor left.
const EVICT_ON_EMFILE: usize = 8;

/// The connection cap when none is given: the soft file limit less a reserve, so that
/// clients alone can never exhaust descriptors. At least 16.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(65_536);
    soft.saturating_sub(RESERVED_FDS).clamp(16, 1 << 20) as usize
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in service since then, no byte of the next one yet.
    Idle(Instant),
    /// Bytes of a request head arriving since then.
    Head(Instant),
    /// Requests in service (their body reads have their own timeout).
    Busy(usize),
}

/// One connection's phase, shared by its socket, its service and its watchdog.
struct Conn {
    phase: Mutex<Phase>,
    wake: Notify,
    evict: AtomicBool,
}

impl Conn {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            wake: Notify::new(),
            evict: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = f(*p);
        drop(p);
        self.wake.notify_one();
    }

    /// Bytes arrived: a head starts if the connection was idle.
    fn read_bytes(&self) {
        let idle = matches!(self.phase(), Phase::Idle(_));
        if idle {
            self.set(|p| match p {
                Phase::Idle(_) => Phase::Head(Instant::now()),
                other => other,
            });
        }
    }

    fn request_started(&self) {
        self.set(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
    }

    fn request_done(&self) {
        self.set(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// Since when the connection has held a slot without a request in service.
    fn waiting_since(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Idle(t) | Phase::Head(t) => Some(t),
            Phase::Busy(_) => None,
        }
    }

    /// Resolves when the connection should be closed: a timeout passed or it was
    /// evicted.
    async fn watchdog(&self, limits: Limits) -> &'static str {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.evict.load(Ordering::SeqCst) {
                return "evicted to make room";
            }
            let deadline = match self.phase() {
                Phase::Idle(t) => Some((t + limits.keep_alive_timeout, "keep-alive timeout")),
                Phase::Head(t) => Some((t + limits.header_read_timeout, "header read timeout")),
                Phase::Busy(_) => None,
            };
            match deadline {
                Some((at, why)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {
                            // Still the same phase and past due (a wake-up re-checks).
                            let due = match self.phase() {
                                Phase::Idle(t) => t + limits.keep_alive_timeout,
                                Phase::Head(t) => t + limits.header_read_timeout,
                                Phase::Busy(_) => continue,
                            };
                            if Instant::now() >= due {
                                return why;
                            }
                        }
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

/// Marks a request in service until dropped: with the response body once hyper has
/// written it, or with the request's future if the connection goes first.
struct InService(Arc<Conn>);

impl Drop for InService {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its request marked in service until it is written.
struct TrackedBody {
    inner: Body,
    _in_service: InService,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.read_bytes();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Open connections, so that one can be chosen to make room.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, conn: Arc<Conn>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.closed.notify_waiters();
    }

    /// Asks the connection that has waited longest without a request to close; false
    /// when every connection is busy.
    fn evict_one(&self) -> bool {
        let conns = self.lock();
        let oldest = conns
            .values()
            .filter(|c| !c.evict.load(Ordering::SeqCst))
            .filter_map(|c| c.waiting_since().map(|t| (t, c)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, c)) => {
                c.evict.store(true, Ordering::SeqCst);
                c.wake.notify_one();
                true
            }
            None => false,
        }
    }

    fn shut_all(&self) {
        for c in self.lock().values() {
            c.evict.store(true, Ordering::SeqCst);
            c.wake.notify_one();
        }
    }
}

/// Accepts connections until `shutdown` resolves, then closes idle connections, lets
/// requests in service finish and returns when every connection is gone.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let registry = Arc::new(Registry::default());
    let mut last_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if out_of_descriptors(&e) => {
                // Make room and back off: retrying at once would spin on the same error.
                // A few at a time, so that a backlog of slow clients clears quickly.
                let evicted = (0..EVICT_ON_EMFILE)
                    .filter(|_| registry.evict_one())
                    .count();
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, evicted, open = registry.len(), "accept failed; backing off");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            // The peer went before we took it (ECONNABORTED and the like): next.
            Err(_) => continue,
        };
        if registry.len() >= limits.max_connections && !registry.evict_one() {
            // Every slot has a request in service: refuse this one.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::new());
        let id = registry.add(conn.clone());
        let (app, registry) = (app.clone(), registry.clone());
        tokio::spawn(async move {
            connection(stream, conn, app, limits).await;
            registry.remove(id);
        });
    }
    // Stop: idle connections close now; busy ones when their requests are answered.
    loop {
        let closed = registry.closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        registry.shut_all();
        if registry.len() == 0 {
            return Ok(());
        }
        closed.await;
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    let errno = rustix::io::Errno::from_io_error(e);
    [
        rustix::io::Errno::MFILE,
        rustix::io::Errno::NFILE,
        rustix::io::Errno::NOBUFS,
        rustix::io::Errno::NOMEM,
    ]
    .iter()
    .any(|&x| Some(x) == errno)
}

/// Serves one connection with HTTP/1.1 until the client closes it, the watchdog
/// fires, or a shutdown finds it idle.
async fn connection(stream: TcpStream, conn: Arc<Conn>, app: Router, limits: Limits) {
    let io = TokioIo::new(Watched {
        stream,
        conn: conn.clone(),
    });
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (app, conn) = (app.clone(), svc_conn.clone());
        conn.request_started();
        let in_service = InService(conn);
        async move {
            let resp = match app.oneshot(req.map(Body::new)).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            let (parts, inner) = resp.into_parts();
            let body = TrackedBody {
                inner,
                _in_service: in_service,
            };
            Ok::<_, Infallible>(hyper::Response::from_parts(parts, body))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watchdog times heads and idle time; hyper's own timer would mix the two.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    tokio::select! {
        r = served.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        why = conn.watchdog(limits) => {
            tracing::debug!(why, "closing connection");
            match conn.phase() {
                // Nothing in service: close at once.
                Phase::Idle(_) | Phase::Head(_) => {}
                // A shutdown: answer what is in service, then close.
                Phase::Busy(_) => {
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
        }
    }
}
