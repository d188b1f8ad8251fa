//! The restore client's side of HTTP: the staged image, chunks, station.json and
//! progress reports, from and to the orchestrator. Blocking (ureq): the restore
//! runs its fetches on plain threads.

// ureq's own error type is large; it lives only between a request and its handling.
#![allow(clippy::result_large_err)]

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::restore::Fetch;
use crate::staged::{Staged, MAX_STAGED_BYTES};
use crate::{ChunkId, Error, MAX_CHUNK_SIZE};

/// Attempts per request when the connection fails or the server answers 5xx.
const ATTEMPTS: u32 = 3;

/// A client of one orchestrator, with the per-restore token.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
    limit: Option<Limiter>,
}

impl Client {
    /// `base` is the server URL (`http://10.0.0.1:8080`); `mbit` caps the bandwidth
    /// chunk fetches use, in Mbit/s.
    pub fn new(
        base: &str,
        token: &str,
        parallel: usize,
        mbit: Option<f64>,
    ) -> Result<Client, Error> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Error::Fetch {
                url: base.into(),
                why: "the server URL must start with http:// or https://".into(),
            });
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
        })
    }

    /// The staged image `id`, checked against its id.
    pub fn staged(&self, id: &ChunkId) -> Result<Staged, Error> {
        let url = format!("{}/images/{id}/index", self.base);
        let bytes = self.get(&url, MAX_STAGED_BYTES)?;
        Staged::decode(&bytes, Some(id))
    }

    /// The station's station.json, as the orchestrator renders it for this restore.
    pub fn station_json(&self, mac: &str) -> Result<Vec<u8>, Error> {
        let url = format!("{}/api/v1/stations/{mac}/station.json", self.base);
        self.get(&url, 64 << 10)
    }

    /// Tell the orchestrator how the restore goes, trying `attempts` times (progress
    /// reports once, the final report a few times).
    pub fn report(&self, mac: &str, body: &serde_json::Value, attempts: u32) -> Result<(), Error> {
        let url = format!("{}/api/v1/stations/{mac}/restore-progress", self.base);
        let body = body.to_string();
        self.request("POST", &url, attempts, |req| {
            req.set("Content-Type", "application/json")
                .send_string(&body)
        })
        .map(|_| ())
        .map_err(|f| f.error)
    }

    fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Error> {
        let resp = self
            .request("GET", url, ATTEMPTS, |req| req.call())
            .map_err(|f| f.error)?;
        read_body(url, resp, limit)
    }

    fn request(
        &self,
        method: &str,
        url: &str,
        attempts: u32,
        send: impl Fn(ureq::Request) -> Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, Failure> {
        let mut wait = Duration::from_millis(300);
        let mut attempt = 1;
        loop {
            let req = self
                .agent
                .request(method, url)
                .set("Authorization", &format!("Bearer {}", self.token));
            let why = match send(req) {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(code, resp)) if code < 500 => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(Failure {
                        status: Some(code),
                        error: Error::Fetch {
                            url: url.into(),
                            why: format!("the server answered {code}: {}", text.trim()),
                        },
                    });
                }
                Err(ureq::Error::Status(code, _)) => format!("the server answered {code}"),
                Err(ureq::Error::Transport(t)) => transport(&t),
            };
            if attempt >= attempts {
                return Err(Failure {
                    status: None,
                    error: Error::Fetch {
                        url: url.into(),
                        why: format!("{why} ({attempt} attempts)"),
                    },
                });
            }
            std::thread::sleep(wait);
            wait *= 2;
            attempt += 1;
        }
    }
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

fn read_body(url: &str, resp: ureq::Response, limit: u64) -> Result<Vec<u8>, Error> {
    let too_big = |n: u64| Error::Fetch {
        url: url.into(),
        why: format!("{n} bytes, more than the {limit} expected"),
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
        .map_err(|e| Error::Fetch {
            url: url.into(),
            why: format!("reading the body: {e}"),
        })?;
    if body.len() as u64 > limit {
        return Err(too_big(body.len() as u64));
    }
    if let Some(n) = declared.filter(|&n| n != body.len() as u64) {
        return Err(Error::Fetch {
            url: url.into(),
            why: format!("the body ended after {} of {n} bytes", body.len()),
        });
    }
    Ok(body)
}

impl Fetch for Client {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        let url = format!("{}/chunks/{id}", self.base);
        // A chunk compresses to at most a little more than its size.
        let limit = u64::from(MAX_CHUNK_SIZE) + (1 << 20);
        let resp = match self.request("GET", &url, ATTEMPTS, |req| req.call()) {
            Ok(resp) => resp,
            Err(Failure {
                status: Some(404), ..
            }) => return Err(Error::MissingChunk { id: *id }),
            Err(f) => return Err(f.error),
        };
        let body = read_body(&url, resp, limit)?;
        if let Some(limit) = &self.limit {
            limit.take(body.len() as u64);
        }
        Ok(body)
    }
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
