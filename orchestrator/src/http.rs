//! The HTTP server loop: accepts connections for the router `daemon` hands it, and
//! keeps one LAN client from taking the server down. Each connection has a header
//! read timeout (also while it sits idle between requests), one client address
//! holds at most `max_per_client` connections, and past `max_connections` in all a
//! small reserve is kept for the admin API (requests there without the admin token
//! get 503). Connections over a limit are closed at once, before they cost a file
//! descriptor for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits of [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, the admin reserve aside.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_per_client: usize,
    /// How long a client may take to send a request's headers, and how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
}

/// Connections beyond `max_connections` kept for the admin API.
pub const ADMIN_RESERVE: usize = 32;

/// Set on requests that came in on a reserve connection: `api` answers them only
/// with the admin token.
#[derive(Clone, Copy, Debug)]
pub struct Reserve;

/// How long shutdown lets open connections finish their request.
const DRAIN: Duration = Duration::from_secs(5);

/// Who holds how many connections.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A connection counted in [`Open`], uncounted when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.peer);
            }
        }
    }
}

/// Count a new connection from `peer`: `None` when it is over a limit, else its
/// slot and whether it is one of the admin reserve.
fn admit(open: &Arc<Mutex<Open>>, peer: IpAddr, limits: &Limits) -> Option<(Slot, bool)> {
    let mut state = open.lock().unwrap_or_else(|p| p.into_inner());
    let mine = state.per_client.get(&peer).copied().unwrap_or(0);
    if mine >= limits.max_per_client || state.total >= limits.max_connections + ADMIN_RESERVE {
        return None;
    }
    let reserve = state.total >= limits.max_connections;
    state.total += 1;
    *state.per_client.entry(peer).or_default() += 1;
    drop(state);
    let slot = Slot {
        open: open.clone(),
        peer,
    };
    Some((slot, reserve))
}

/// Serve `app` on `listener` until `cancel`; then stop accepting and give open
/// connections [`DRAIN`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused_said = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors or memory: say so, wait, go on.
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((slot, reserve)) = admit(&open, peer.ip(), &limits) else {
            if refused_said.elapsed() >= Duration::from_secs(60) {
                refused_said = tokio::time::Instant::now();
                tracing::warn!(%peer, ?limits, "http: connection over the limits closed (said once a minute)");
            }
            drop(stream);
            continue;
        };
        let service =
            app.clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if reserve {
                        req.extensions_mut().insert(Reserve);
                    }
                    req
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), connections.wait()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 4,
        max_per_client: 2,
        header_timeout: Duration::from_secs(10),
    };

    #[test]
    fn one_client_gets_its_share_and_the_reserve_comes_after_the_cap() {
        let open = Arc::new(Mutex::new(Open::default()));
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let a1 = admit(&open, ip(1), &LIMITS).unwrap();
        let _a2 = admit(&open, ip(1), &LIMITS).unwrap();
        assert!(admit(&open, ip(1), &LIMITS).is_none(), "two per client");
        let b = admit(&open, ip(2), &LIMITS).unwrap();
        let c = admit(&open, ip(3), &LIMITS).unwrap();
        assert!(!c.1, "the fourth is a normal connection");
        let mut reserve = Vec::new();
        for n in 0..ADMIN_RESERVE as u8 {
            let (slot, is_reserve) = admit(&open, ip(10 + n), &LIMITS).unwrap();
            assert!(is_reserve, "past the cap: the admin reserve");
            reserve.push(slot);
        }
        assert!(
            admit(&open, ip(200), &LIMITS).is_none(),
            "the reserve is full"
        );
        drop(a1);
        drop(reserve);
        drop((b, c));
        assert_eq!(open.lock().unwrap().total, 1);
        assert!(
            admit(&open, ip(1), &LIMITS).is_some(),
            "a slot again once others close"
        );
    }
}
