//! The HTTP/1 listener both hosts run: our own accept loop over hyper connections, so that no
//! connection holds a file descriptor for ever and a flood of idle ones cannot starve callouts.
//!
//! Each connection is in one phase: `Fresh` (accepted, nothing read yet), `Head` (bytes of a
//! request head arriving), `Busy` (the handler runs; its body read has its own 10 s bound) or
//! `Idle` (keep-alive, after a response). `Fresh` and `Head` close after `header_read_timeout`
//! (counted from the accept, or from the first byte after an idle spell), `Idle` after
//! `keep_alive_idle`. hyper's own `header_read_timeout` is not used: its timer also runs while a
//! keep-alive connection is idle, so it cannot give the two different bounds.
//!
//! At `max_connections` the accept loop closes the oldest idle keep-alive connection (nothing is
//! lost), else the oldest connection with no complete request head 500 ms after it began
//! (silent or slow-header: stalled), and accepts in its place; when every connection is
//! mid-request or younger, it stops accepting (the kernel backlog holds new ones) until a slot
//! frees, which the timeouts bound.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// `[server]` connection bounds, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head must be complete this long after the accept (or its first byte).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress closes after this long.
    pub keep_alive_idle: Duration,
    /// `None`: as many as fit under the open-file limit (at most [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            keep_alive_idle: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// The default cap when the open-file limit is larger (memory stays small: a few KiB each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// At the connection limit, a connection with no complete request head this long after it began
/// may be closed to make room: Entra writes its head at once and gives up after 2 s, so it is a
/// stalled or hostile client, and waiting for `header_read_timeout` would let a silent or
/// slow-header flood hold every slot.
const STALLED_HEAD: Duration = Duration::from_millis(500);

/// File descriptors kept for everything but inbound connections (outbound HTTPS to Graph, Key
/// Vault and Storage, SQLite and its WAL, logs, the listener): `nofile / 4`, 64 to 256.
fn reserve(nofile: u64) -> u64 {
    (nofile / 4).clamp(64, 256)
}

/// How many inbound connections fit under the soft open-file limit `nofile`, and a warning when
/// the configured number had to be lowered.
pub fn connection_limit(configured: Option<usize>, nofile: Option<u64>) -> (usize, Option<String>) {
    let fits = nofile.map(|n| usize::try_from(n.saturating_sub(reserve(n))).unwrap_or(usize::MAX));
    match (configured, fits) {
        (Some(c), Some(f)) if c > f => (
            f.max(1),
            Some(format!(
                "server.max_connections = {c} does not fit under the open-file limit of {} (with {} kept for outbound connections and the database); using {}",
                nofile.unwrap_or_default(),
                nofile.map(reserve).unwrap_or_default(),
                f.max(1)
            )),
        ),
        (Some(c), _) => (c, None),
        (None, Some(f)) => (f.clamp(1, DEFAULT_MAX_CONNECTIONS), None),
        (None, None) => (DEFAULT_MAX_CONNECTIONS, None),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (logged before and after) and returns the
/// soft limit in effect, `None` where there is no such limit.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                return None;
            }
        };
        match rlimit::increase_nofile_limit(hard) {
            Ok(now) if now > soft => {
                tracing::info!(
                    before = soft,
                    after = now,
                    hard,
                    "raised the open-file limit"
                );
                Some(now)
            }
            Ok(now) => {
                tracing::info!(soft = now, hard, "open-file limit");
                Some(now)
            }
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                Some(soft)
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// The soft open-file limit now in effect, without changing it.
pub fn nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(s, _)| s)
    }
    #[cfg(not(unix))]
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    Head,
    Busy,
    Idle,
}

struct Conn {
    id: u64,
    phase: Mutex<(Phase, Instant)>,
    changed: Notify,
    evict: Notify,
    evicting: AtomicBool,
}

impl Conn {
    fn get(&self) -> (Phase, Instant) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, f: impl FnOnce(Phase, Instant) -> Option<(Phase, Instant)>) {
        let mut g = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = f(g.0, g.1) {
            *g = next;
            drop(g);
            self.changed.notify_one();
        }
    }

    /// Bytes came in: the start of a request head unless one is in progress. A fresh
    /// connection's head is timed from the accept.
    fn bytes_arrived(&self) {
        self.set(|ph, since| match ph {
            Phase::Fresh => Some((Phase::Head, since)),
            Phase::Idle => Some((Phase::Head, Instant::now())),
            Phase::Head | Phase::Busy => None,
        });
    }

    fn deadline(&self, l: &Limits) -> Option<Instant> {
        let (ph, since) = self.get();
        match ph {
            Phase::Fresh | Phase::Head => Some(since + l.header_read_timeout),
            Phase::Idle => Some(since + l.keep_alive_idle),
            Phase::Busy => None,
        }
    }

    /// Closable to make room at the connection limit (see [`reclaimable`]).
    fn reclaimable(&self) -> bool {
        let (ph, since) = self.get();
        reclaimable(ph, since)
    }
}

/// Closable to make room at the connection limit: idle after a response, or with no complete
/// request head `STALLED_HEAD` after it began (silent or slow-header: a flood of either must not
/// hold every slot until its header timeout). A connection just accepted is not closed before it
/// has had the chance to send its request.
fn reclaimable(ph: Phase, since: Instant) -> bool {
    match ph {
        Phase::Idle => true,
        Phase::Fresh | Phase::Head => since.elapsed() >= STALLED_HEAD,
        Phase::Busy => false,
    }
}

/// The TCP stream, telling its connection when bytes arrive.
struct Tracked {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks a reclaimable connection to close: the oldest idle one, else the oldest stalled
    /// one; false if none.
    fn evict_oldest(&self) -> bool {
        let victim = self
            .lock()
            .values()
            .filter(|c| !c.evicting.load(Ordering::Relaxed))
            .filter_map(|c| {
                // One read of the phase for both the test and the order.
                let (ph, since) = c.get();
                reclaimable(ph, since).then(|| ((ph != Phase::Idle, since), c.clone()))
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, c)| c);
        match victim {
            Some(c) => {
                c.evicting.store(true, Ordering::Relaxed);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// One connection until it ends, times out, is evicted, or drains after `shutdown`.
async fn serve_conn(
    stream: TcpStream,
    conn: Arc<Conn>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(Tracked {
        io: stream,
        conn: conn.clone(),
    });
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let conn = svc_conn.clone();
        let mut router = router.clone();
        conn.set(|_, _| Some((Phase::Busy, Instant::now())));
        async move {
            let resp = tower::Service::call(&mut router, req).await;
            conn.set(|_, _| Some((Phase::Idle, Instant::now())));
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let c = builder.serve_connection(io, svc);
    tokio::pin!(c);
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&limits);
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = until(deadline) => {
                if conn.deadline(&limits).is_some_and(|d| Instant::now() >= d) {
                    tracing::debug!(phase = ?conn.get().0, "closing a connection: timed out");
                    break;
                }
            }
            () = conn.changed.notified() => {}
            () = conn.evict.notified() => {
                if conn.reclaimable() {
                    tracing::debug!("closing an unused connection: at the connection limit");
                    break;
                }
                conn.evicting.store(false, Ordering::Relaxed);
            }
            () = shutdown.cancelled(), if !draining => {
                // Idle connections close now; a request in progress is answered first.
                c.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and returns
/// once every open request is answered.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max = max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry::default());
    let stop = CancellationToken::new();
    let next_id = AtomicU64::new(0);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let mut at_limit = false;
    'accept: loop {
        // A slot first: at the limit, close the oldest unused connection for it.
        let permit = loop {
            if let Ok(p) = slots.clone().try_acquire_owned() {
                if at_limit {
                    tracing::info!(max_connections = max, "below the connection limit again");
                    at_limit = false;
                }
                break p;
            }
            if !at_limit {
                tracing::warn!(
                    max_connections = max,
                    "connection limit reached: closing unused connections, oldest first (server.max_connections)"
                );
                at_limit = true;
            }
            registry.evict_oldest();
            tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => break 'accept,
                },
                // Re-scan: a connection may have gone idle meanwhile.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = stop.cancelled() => break 'accept,
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: the limit above should prevent it; back off.
                    tracing::warn!(error = %e, "accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            phase: Mutex::new((Phase::Fresh, Instant::now())),
            changed: Notify::new(),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
        });
        registry.lock().insert(id, conn.clone());
        let (router, registry, stop) = (router.clone(), registry.clone(), stop.clone());
        tokio::spawn(async move {
            serve_conn(stream, conn.clone(), router, limits, stop).await;
            registry.lock().remove(&conn.id);
            drop(permit);
        });
    }
    drop(listener);
    // Every slot back: every connection has finished (each bounded by the timeouts above).
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_under_the_open_file_limit() {
        assert_eq!(connection_limit(None, Some(1024)), (768, None));
        assert_eq!(connection_limit(None, Some(512)), (384, None));
        assert_eq!(
            connection_limit(None, Some(1 << 20)).0,
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(connection_limit(Some(100), Some(1024)), (100, None));
        let (n, warn) = connection_limit(Some(5000), Some(1024));
        assert_eq!(n, 768);
        assert!(warn.is_some_and(|w| w.contains("server.max_connections")));
        assert_eq!(connection_limit(Some(50), None), (50, None));
    }
}
