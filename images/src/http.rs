//! The restore client's side of HTTP: the staged image, the index summary and the
//! ids of groups, chunks, station.json and progress reports, from and to the
//! orchestrator. Blocking (ureq): the restore
//! runs its fetches on plain threads.

// ureq's own error type is large; it lives only between a request and its handling.
#![allow(clippy::result_large_err)]

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::index::{ids_from_bytes, Summary, GROUP_LEN};
use crate::restore::Fetch;
use crate::staged::{Staged, MAX_STAGED_BYTES};
use crate::{ChunkId, Error, MAX_CHUNK_SIZE};

/// The largest index summary a client accepts: a fully used 16 TiB disk at 64 KiB
/// chunks has 64 MiB of group hashes.
pub const MAX_SUMMARY_BYTES: u64 = 256 << 20;
/// Most groups of ids in one answer.
pub const MAX_GROUPS: u64 = 64;

/// How long a request is retried after a connection failure, a broken body or a 5xx
/// when the caller does not say: long enough to ride out a restart of the daemon.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(60);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A client of one orchestrator, with the per-restore token.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
    limit: Option<Limiter>,
    retry_for: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &"(redacted)")
            .finish_non_exhaustive()
    }
}

/// How hard to try one request.
#[derive(Clone, Copy)]
enum Retry {
    /// Once, with a short timeout: progress reports, which must never hold up the
    /// restore.
    Once,
    /// Until the client's retry time is up.
    Patiently,
}

impl Client {
    /// `base` is the server URL (`http://10.0.0.1:8080`); `mbit` caps the bandwidth
    /// chunk fetches use, in Mbit/s; failed requests are retried for `retry_for`.
    pub fn new(
        base: &str,
        token: &str,
        parallel: usize,
        mbit: Option<f64>,
        retry_for: Duration,
    ) -> Result<Client, Error> {
        let base = base.trim_end_matches('/');
        if base.starts_with("https://") {
            return Err(Error::Usage(format!(
                "{base}: this build speaks plain http (every chunk and the staged index are \
                 verified against their hashes, so TLS adds no integrity); use http://"
            )));
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(Error::Usage(format!(
                "{base:?}: the server URL must look like http://10.0.0.1:8080"
            )));
        }
        if let Some(m) = mbit.filter(|m| !(m.is_finite() && *m >= 0.01)) {
            return Err(Error::Usage(format!(
                "--max-mbit {m}: expected a number of at least 0.01"
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(30))
            .timeout_write(Duration::from_secs(30))
            .max_idle_connections_per_host(parallel.max(1) * 2)
            .build();
        Ok(Client {
            base: base.to_owned(),
            token: token.to_owned(),
            agent,
            limit: mbit.map(Limiter::new),
            retry_for,
        })
    }

    /// The staged image `id`, checked against its id.
    pub fn staged(&self, id: &ChunkId) -> Result<Staged, Error> {
        let url = format!("{}/images/{id}/index", self.base);
        let bytes = self
            .request("GET", &url, None, MAX_STAGED_BYTES, Retry::Patiently)
            .map_err(|f| f.error)?;
        Staged::decode(&bytes, Some(id))
    }

    /// The summary of the index `id`, checked against its id.
    pub fn summary(&self, id: &ChunkId) -> Result<Summary, Error> {
        let url = format!("{}/indexes/{id}", self.base);
        let bytes = self
            .request("GET", &url, None, MAX_SUMMARY_BYTES, Retry::Patiently)
            .map_err(|f| f.error)?;
        Summary::decode(&bytes, Some(id))
    }

    /// The station's station.json, as the orchestrator renders it for this restore.
    pub fn station_json(&self, mac: &pxe::MacAddr) -> Result<Vec<u8>, Error> {
        let url = format!("{}/api/v1/stations/{mac}/station.json", self.base);
        self.request("GET", &url, None, 64 << 10, Retry::Patiently)
            .map_err(|f| f.error)
    }

    /// Tell the orchestrator how the restore goes: once for a progress report
    /// (`last` false), patiently for the final one.
    pub fn report(
        &self,
        mac: &pxe::MacAddr,
        body: &serde_json::Value,
        last: bool,
    ) -> Result<(), Error> {
        let url = format!("{}/api/v1/stations/{mac}/restore-progress", self.base);
        let retry = if last { Retry::Patiently } else { Retry::Once };
        self.request(
            "POST",
            &url,
            Some(Body::Json(body.to_string())),
            64 << 10,
            retry,
        )
        .map(|_| ())
        .map_err(|f| f.error)
    }

    /// Ask for this restore's wave, saying where this station serves chunks: once,
    /// with a short timeout (a restore never waits for it).
    pub fn wave(&self, mac: &pxe::MacAddr, port: u16) -> Result<crate::peer::Wave, Error> {
        let url = format!("{}/api/v1/stations/{mac}/peers", self.base);
        let body = serde_json::json!({ "port": port }).to_string();
        let answer = self
            .request("POST", &url, Some(Body::Json(body)), 1 << 20, Retry::Once)
            .map_err(|f| f.error)?;
        serde_json::from_slice(&answer).map_err(|e| Error::Fetch {
            url,
            why: format!("the answer is not a wave: {e}"),
        })
    }

    /// Wait as the bandwidth cap says `bytes` more take (chunks from peers count
    /// against the same cap as chunks from the server).
    pub fn pace(&self, bytes: u64) {
        if let Some(limit) = &self.limit {
            limit.take(bytes);
        }
    }

    /// A capture's progress report (`last`: patiently); the answer is the capture's
    /// view, which names its chunk size.
    pub fn capture_report(
        &self,
        mac: &pxe::MacAddr,
        body: &serde_json::Value,
        last: bool,
    ) -> Result<serde_json::Value, Error> {
        let url = format!("{}/api/v1/stations/{mac}/capture/progress", self.base);
        let retry = if last { Retry::Patiently } else { Retry::Once };
        let answer = self
            .request(
                "POST",
                &url,
                Some(Body::Json(body.to_string())),
                64 << 10,
                retry,
            )
            .map_err(|f| f.error)?;
        serde_json::from_slice(&answer).map_err(|e| Error::Fetch {
            url,
            why: format!("the answer is not JSON: {e}"),
        })
    }

    /// Which of `ids` the server's store lacks (a capture's question).
    pub fn missing(&self, mac: &pxe::MacAddr, ids: &[ChunkId]) -> Result<Vec<bool>, Error> {
        let url = format!("{}/api/v1/stations/{mac}/capture/missing", self.base);
        let body: Vec<u8> = ids.iter().flat_map(|i| i.0).collect();
        let answer = self
            .request(
                "POST",
                &url,
                Some(Body::Bytes(body)),
                ids.len() as u64,
                Retry::Patiently,
            )
            .map_err(|f| f.error)?;
        if answer.len() != ids.len() || answer.iter().any(|&b| b > 1) {
            return Err(Error::Fetch {
                url,
                why: format!("{} answers to {} ids", answer.len(), ids.len()),
            });
        }
        Ok(answer.into_iter().map(|b| b == 1).collect())
    }

    /// Upload compressed chunks (frames: the id, a u32 LE length, the bytes), at most
    /// [`MAX_BATCH_BYTES`] of them; the bandwidth cap applies.
    pub fn upload(&self, mac: &pxe::MacAddr, frames: Vec<u8>) -> Result<(), Error> {
        if let Some(limit) = &self.limit {
            limit.take(frames.len() as u64);
        }
        let url = format!("{}/api/v1/stations/{mac}/capture/chunks", self.base);
        self.request(
            "POST",
            &url,
            Some(Body::Bytes(frames)),
            64 << 10,
            Retry::Patiently,
        )
        .map(|_| ())
        .map_err(|f| f.error)
    }

    /// Send a capture's index: the server checks it and makes it the image.
    pub fn finish_capture(&self, mac: &pxe::MacAddr, index: Vec<u8>) -> Result<(), Error> {
        let url = format!("{}/api/v1/stations/{mac}/capture/index", self.base);
        self.request(
            "POST",
            &url,
            Some(Body::Bytes(index)),
            64 << 10,
            Retry::Patiently,
        )
        .map(|_| ())
        .map_err(|f| f.error)
    }

    /// One request, its body read and bounded by `limit`, retried per `retry`.
    fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Body>,
        limit: u64,
        retry: Retry,
    ) -> Result<Vec<u8>, Failure> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(300);
        let mut attempt = 1;
        loop {
            let mut req = self
                .agent
                .request(method, url)
                .set("Authorization", &format!("Bearer {}", self.token));
            if matches!(retry, Retry::Once) {
                req = req.timeout(Duration::from_secs(5));
            }
            let sent = match &body {
                Some(Body::Json(text)) => req
                    .set("Content-Type", "application/json")
                    .send_string(text),
                Some(Body::Bytes(bytes)) => req
                    .set("Content-Type", "application/octet-stream")
                    .send_bytes(bytes),
                None => req.call(),
            };
            let why = match sent {
                Ok(resp) => match read_body(url, resp, limit) {
                    Ok(body) => return Ok(body),
                    Err(BodyError::TooBig(e)) => {
                        return Err(Failure {
                            status: None,
                            error: e,
                        })
                    }
                    Err(BodyError::Broken(why)) => why,
                },
                Err(ureq::Error::Status(code, resp)) if code < 500 => {
                    let text = resp.into_string().unwrap_or_default();
                    // Our API answers {"error": "..."}; show just the message.
                    let message = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| text.trim().to_owned());
                    return Err(Failure {
                        status: Some(code),
                        error: Error::Fetch {
                            url: url.into(),
                            why: format!("the server answered {code}: {message}"),
                        },
                    });
                }
                Err(ureq::Error::Status(code, _)) => format!("the server answered {code}"),
                Err(ureq::Error::Transport(t)) => transport(&t),
            };
            let give_up = match retry {
                Retry::Once => true,
                Retry::Patiently => started.elapsed() + wait > self.retry_for,
            };
            if give_up {
                return Err(Failure {
                    status: None,
                    error: Error::Fetch {
                        url: url.into(),
                        why: format!(
                            "{why} ({attempt} attempts over {:.0} s)",
                            started.elapsed().as_secs_f64()
                        ),
                    },
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// What a request sends.
enum Body {
    Json(String),
    Bytes(Vec<u8>),
}

/// A failed request, with the HTTP status when the server answered.
struct Failure {
    status: Option<u16>,
    error: Error,
}

fn transport(t: &ureq::Transport) -> String {
    match t.kind() {
        ureq::ErrorKind::ConnectionFailed => {
            format!("cannot connect ({t}); is the netreset server running and reachable?")
        }
        _ => t.to_string(),
    }
}

enum BodyError {
    /// More than the caller allows: not worth retrying.
    TooBig(Error),
    /// The connection broke or the body was short: worth retrying.
    Broken(String),
}

fn read_body(url: &str, resp: ureq::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let too_big = |n: u64| {
        BodyError::TooBig(Error::Fetch {
            url: url.into(),
            why: format!("{n} bytes, more than the {limit} expected"),
        })
    };
    let declared = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(too_big(n));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    resp.into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| BodyError::Broken(format!("reading the body: {e}")))?;
    if body.len() as u64 > limit {
        return Err(too_big(body.len() as u64));
    }
    if let Some(n) = declared.filter(|&n| n != body.len() as u64) {
        return Err(BodyError::Broken(format!(
            "the body ended after {} of {n} bytes",
            body.len()
        )));
    }
    Ok(body)
}

impl Fetch for Client {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let url = format!("{}/chunks/{id}", self.base);
        // A chunk compresses to at most a little more than its size.
        let limit = u64::from(MAX_CHUNK_SIZE) + (1 << 20);
        let body = match self.request("GET", &url, None, limit, Retry::Patiently) {
            Ok(body) => body,
            Err(Failure {
                status: Some(404), ..
            }) => return Err(Error::MissingChunk { id: *id }),
            Err(f) => return Err(f.error),
        };
        if let Some(limit) = &self.limit {
            limit.take(body.len() as u64);
        }
        Ok(body)
    }

    /// `GET /chunks?ids=a,b,...`: the chunks framed as (u32 LE length, bytes) each.
    fn fetch_many(&self, ids: &[ChunkId]) -> Vec<Result<Vec<u8>, Error>> {
        if ids.len() < 2 {
            return ids.iter().map(|id| self.fetch(id)).collect();
        }
        let list: Vec<String> = ids.iter().map(ChunkId::to_string).collect();
        let url = format!("{}/chunks?ids={}", self.base, list.join(","));
        let limit = MAX_BATCH_BYTES;
        let body = match self.request("GET", &url, None, limit, Retry::Patiently) {
            Ok(body) => body,
            Err(f) => return vec![Err(f.error)],
        };
        match unframe(&body, ids.len()) {
            Some(chunks) => {
                if let Some(limit) = &self.limit {
                    limit.take(body.len() as u64);
                }
                chunks.into_iter().map(Ok).collect()
            }
            // A garbled batch: fetch its chunks one by one instead.
            None => ids.iter().map(|id| self.fetch(id)).collect(),
        }
    }

    /// `GET /indexes/{id}/groups?first=K&count=N`: the ids, 32 bytes each.
    fn group_ids(&self, index: &ChunkId, first: u64, count: u64) -> Result<Vec<ChunkId>, Error> {
        let count = count.clamp(1, MAX_GROUPS);
        let url = format!(
            "{}/indexes/{index}/groups?first={first}&count={count}",
            self.base
        );
        let limit = count * u64::from(GROUP_LEN) * 32;
        let body = self
            .request("GET", &url, None, limit, Retry::Patiently)
            .map_err(|f| f.error)?;
        ids_from_bytes(&body)
    }
}

/// The largest chunk batch the server sends (it refuses to build a larger one).
pub const MAX_BATCH_BYTES: u64 = 32 << 20;

/// Split a batch body into `n` chunks; `None` unless it is exactly `n` frames.
pub fn unframe(mut body: &[u8], n: usize) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(n);
    while !body.is_empty() {
        let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
        out.push(body.get(4..4 + len)?.to_vec());
        body = &body[4 + len..];
    }
    (out.len() == n).then_some(out)
}

/// Paces fetches so their average rate stays under a cap: each fetch books the time
/// its bytes take at the cap, and waits until its booking ends.
#[derive(Debug)]
struct Limiter {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Limiter {
    fn new(mbit: f64) -> Limiter {
        Limiter {
            bytes_per_sec: mbit * 1e6 / 8.0,
            next: Mutex::new(Instant::now()),
        }
    }

    fn take(&self, bytes: u64) {
        let until = {
            let mut next = self.next.lock().expect("not poisoned");
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            *next
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn a_batch_body_splits_into_exactly_its_frames_or_not_at_all() {
        let body = frame(&[b"abc", b"", b"xy"]);
        assert_eq!(
            unframe(&body, 3).unwrap(),
            vec![b"abc".to_vec(), vec![], b"xy".to_vec()]
        );
        assert!(unframe(&body, 2).is_none(), "a frame too many");
        assert!(unframe(&body[..body.len() - 1], 3).is_none(), "cut short");
        assert!(unframe(&body[..2], 1).is_none(), "a torn length");
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unframe(&huge, 3).is_none(), "a length past the end");
    }

    #[test]
    fn the_bandwidth_cap_holds_fetches_to_its_rate() {
        // 8 Mbit/s is 1 MB/s: 300 kB take at least 0.3 s (a lower bound only).
        let limiter = Limiter::new(8.0);
        let started = Instant::now();
        for _ in 0..3 {
            limiter.take(100_000);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(290),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn https_and_malformed_server_urls_and_absurd_caps_are_refused() {
        let retry = Duration::from_secs(1);
        for (url, mbit) in [
            ("https://10.0.0.1", None),
            ("ftp://x", None),
            ("http://", None),
            ("http://10.0.0.1:8080", Some(0.0)),
            ("http://10.0.0.1:8080", Some(f64::NAN)),
        ] {
            let err = Client::new(url, "t", 4, mbit, retry).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{url} {mbit:?}: {err}");
        }
        let client = Client::new("http://10.0.0.1:8080/", "secret-token", 4, None, retry).unwrap();
        assert!(
            !format!("{client:?}").contains("secret-token"),
            "the token is not logged"
        );
    }
}
