//! Peer chunk exchange: the stations of one restore wave take chunks from each other,
//! so the server sends each chunk about once however many stations restore.
//!
//! A station's restore fetches through a [`Swarm`]: every chunk has one *seeder*
//! among the wave's good members, chosen by rendezvous hashing of the chunk id and
//! the member's name, so each member seeds about 1/N of the image and when a member
//! leaves only its chunks move. Each member serves ([`serve`]: a small HTTP/1.1
//! server, GET only, requests and connections bounded) `GET /chunks/{id}` and
//! `GET /chunks?ids=a,b,...`, only to callers with the wave's token: a chunk its
//! restore has verified on its disk (its [`Shelf`]), else one it seeds, fetched from
//! the server at the first request, verified, and kept in a bounded cache until its
//! own restore writes it. So the server sends each chunk once, to its seeder, and
//! nobody waits for a seeder to reach a chunk in its own disk order. A seeder that
//! lacks a chunk asks first the member that would seed it were the seeder not in the
//! wave, for what it holds only (`GET /held?ids=...`: its shelf and cache, nothing
//! fetched): a station that joins late seeds chunks its predecessors fetched
//! already, and takes those from them, not the server. A member that
//! refuses, fails or does not answer is dropped; a chunk that fails verification
//! drops the member that sent it and comes from the server. Nothing here is
//! trusted: the restore verifies every chunk against its id before it writes it.

// ureq's own error type is large; it lives only between a request and its handling.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::error::io;
use crate::restore::Fetch;
use crate::{ChunkId, Error, MAX_CHUNK_SIZE};

/// The TCP port a station serves its chunks on, unless told otherwise.
pub const DEFAULT_PORT: u16 = 7410;
/// Most ids in one batch request (the restore asks for at most 16).
pub const MAX_BATCH: usize = 16;
/// Most chunks a shelf remembers: 4 Mi chunks are 256 GiB of data at 64 KiB chunks,
/// about 130 MiB of memory; past that a station serves what it has remembered.
const SHELF_CAPACITY: usize = 4 << 20;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest request head (request line and headers).
const MAX_HEAD: usize = 8 << 10;
/// How long a connection may sit idle or take to send a request.
const IDLE: Duration = Duration::from_secs(10);
/// How often a connection waiting for a request looks whether the server stops.
const POLL: Duration = Duration::from_millis(200);
/// Bytes of chunks fetched for peers that a seeder keeps until its own restore
/// writes them; past that the oldest go.
const CACHE_BYTES: usize = 64 << 20;

/// The chunks a station holds, verified, on its disk: where each is. Filled by the
/// restore as it finds chunks in place or writes fetched ones; closed before the
/// disk is changed otherwise (injection), after which nothing is served.
pub struct Shelf {
    chunks: Mutex<HashMap<[u8; 16], (u64, u32)>>,
    open: AtomicBool,
    served_chunks: AtomicU64,
    served_bytes: AtomicU64,
}

impl Default for Shelf {
    fn default() -> Self {
        Shelf {
            chunks: Mutex::new(HashMap::new()),
            open: AtomicBool::new(true),
            served_chunks: AtomicU64::new(0),
            served_bytes: AtomicU64::new(0),
        }
    }
}

impl Shelf {
    /// The chunk `id` is on the disk at `offset`, `len` bytes, verified.
    pub fn put(&self, id: &ChunkId, offset: u64, len: usize) {
        let mut chunks = self.chunks.lock().expect("not poisoned");
        if chunks.len() < SHELF_CAPACITY {
            chunks.insert(key(id), (offset, len as u32));
        }
    }

    fn get(&self, id: &ChunkId) -> Option<(u64, u32)> {
        self.chunks
            .lock()
            .expect("not poisoned")
            .get(&key(id))
            .copied()
    }

    /// Serve nothing more: the disk is about to change.
    pub fn close(&self) {
        self.open.store(false, Relaxed);
    }

    /// Chunks and compressed bytes served to peers so far.
    pub fn served(&self) -> (u64, u64) {
        (
            self.served_chunks.load(Relaxed),
            self.served_bytes.load(Relaxed),
        )
    }
}

/// A chunk's key on the shelf: the first half of its id (the caller verifies the
/// whole id of what it gets).
fn key(id: &ChunkId) -> [u8; 16] {
    id.0[..16].try_into().expect("16 of 32 bytes")
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    One(ChunkId),
    Many(Vec<ChunkId>),
    /// Only those the member holds (`/held?ids=`): nothing fetched for them.
    Held(Vec<ChunkId>),
}

/// A request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub ask: Ask,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// Why a request is refused: the status and the message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub u16, pub String);

/// Parse a request head (up to and including the blank line). Only `GET` of
/// `/chunks/{id}`, `/chunks?ids=...` and `/held?ids=...` (at most [`MAX_BATCH`]
/// ids), without a body; everything else is refused with the status to answer.
pub fn parse_request(head: &[u8]) -> Result<Request, Refusal> {
    let bad = |why: &str| Refusal(400, why.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| bad("the request is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("a malformed request line"));
    };
    let keep_default = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Refusal(505, format!("{version:.16}: HTTP/1.1 only"))),
    };
    let mut token = None;
    let mut keep_alive = keep_default;
    for header in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad("a header without a colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            token = value
                .strip_prefix("Bearer ")
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close")
                && (keep_default || value.eq_ignore_ascii_case("keep-alive"));
        } else if (name.eq_ignore_ascii_case("content-length") && value != "0")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(bad("a request with a body"));
        }
    }
    if method != "GET" {
        return Err(Refusal(405, format!("{method:.16}: only GET")));
    }
    let list = |list: &str| {
        let ids: Vec<&str> = list.split(',').collect();
        if ids.len() > MAX_BATCH {
            return Err(bad(&format!("more than {MAX_BATCH} ids")));
        }
        ids.into_iter()
            .map(str::parse)
            .collect::<Result<Vec<ChunkId>, _>>()
            .map_err(|_| bad("not a list of chunk ids"))
    };
    let ask = if let Some(id) = target.strip_prefix("/chunks/") {
        Ask::One(
            id.parse()
                .map_err(|_| Refusal(404, "not a chunk id".into()))?,
        )
    } else if let Some(ids) = target.strip_prefix("/chunks?ids=") {
        Ask::Many(list(ids)?)
    } else if let Some(ids) = target.strip_prefix("/held?ids=") {
        Ask::Held(list(ids)?)
    } else {
        return Err(Refusal(404, "a peer serves /chunks and /held only".into()));
    };
    Ok(Request {
        ask,
        token,
        keep_alive,
    })
}

/// Serve `swarm`'s chunks, its shelf read from `disk`, on `listener` to the members
/// of its wave, from threads of `scope`, until `stop` is set. Returns the address it
/// listens on.
pub fn serve<'scope, 'env, S: Fetch>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    listener: TcpListener,
    swarm: &'env Swarm<'env, S>,
    disk: &Path,
    stop: &'env AtomicBool,
) -> Result<SocketAddr, Error> {
    let addr = listener.local_addr().map_err(io(disk))?;
    listener.set_nonblocking(true).map_err(io(disk))?;
    let file = Arc::new(File::open(disk).map_err(io(disk))?);
    let connections = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("peer-server".into())
        .spawn_scoped(scope, move || {
            while !stop.load(Relaxed) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                if connections.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
                    connections.fetch_sub(1, Relaxed);
                    continue;
                }
                let (file, count) = (file.clone(), connections.clone());
                let spawned = std::thread::Builder::new()
                    .name("peer-conn".into())
                    .spawn_scoped(scope, move || {
                        let _ = connection(stream, swarm, &file, stop);
                        count.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    connections.fetch_sub(1, Relaxed);
                }
            }
        })
        .map_err(io(disk))?;
    Ok(addr)
}

/// Read the head of one request: `None` at a clean end of the connection, or when
/// it sat idle for [`IDLE`], or `stop` was set while it did.
fn read_head(reader: &mut impl BufRead, stop: &AtomicBool) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let before = head.len();
        let n = match reader
            .by_ref()
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
        {
            Ok(n) => n,
            // The socket's short timeout: a chance to see `stop`.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Relaxed) || started.elapsed() >= IDLE {
                    return match head.is_empty() {
                        true => Ok(None),
                        false => Err(e),
                    };
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return match before {
                0 => Ok(None),
                _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
        }
        if started.elapsed() >= IDLE && !head.ends_with(b"\r\n\r\n") {
            // A head sent a byte at a time.
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        if head.ends_with(b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

fn connection<S: Fetch>(
    stream: TcpStream,
    swarm: &Swarm<'_, S>,
    disk: &File,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IDLE))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while !stop.load(Relaxed) {
        let head = match read_head(&mut reader, stop) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return answer(&mut writer, 431, b"the request head is too long", false);
            }
            Err(e) => return Err(e),
        };
        let request = match parse_request(&head) {
            Ok(r) => r,
            Err(Refusal(status, why)) => return answer(&mut writer, status, why.as_bytes(), false),
        };
        let keep = request.keep_alive;
        let wave = swarm.token.read().expect("not poisoned").clone();
        let good = match (&request.token, &wave) {
            (Some(t), Some(w)) => same(t.as_bytes(), w.as_bytes()),
            _ => false,
        };
        if !good {
            let why: &[u8] = match request.token {
                None => b"the wave token is needed",
                Some(_) => b"not a station of this wave",
            };
            answer(&mut writer, 403, why, keep)?;
        } else {
            match &request.ask {
                Ask::One(id) => match swarm.serve(std::slice::from_ref(id), disk).pop().flatten() {
                    Some(body) => answer(&mut writer, 200, &body, keep)?,
                    None => answer(&mut writer, 404, b"not here", keep)?,
                },
                Ask::Many(ids) | Ask::Held(ids) => {
                    let chunks = match &request.ask {
                        Ask::Held(_) => swarm.held(ids, disk),
                        _ => swarm.serve(ids, disk),
                    };
                    let mut body = Vec::new();
                    for chunk in chunks {
                        let chunk = chunk.unwrap_or_default();
                        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                        body.extend_from_slice(&chunk);
                    }
                    answer(&mut writer, 200, &body, keep)?;
                }
            }
        }
        if !keep {
            return Ok(());
        }
    }
    Ok(())
}

/// Compare two tokens in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn answer(w: &mut impl Write, status: u16, body: &[u8], keep: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "HTTP Version Not Supported",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{}\r\n",
        body.len(),
        if keep { "" } else { "Connection: close\r\n" }
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// One member of the wave, as the server named it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Member {
    /// Its name (the station's MAC): what the seeder of a chunk is chosen by.
    pub station: String,
    /// Where it serves (`10.1.1.23:7410`).
    pub address: SocketAddr,
}

/// The wave as the server describes it to a member.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Wave {
    /// The wave's number; `None`: this restore is in no wave (peers are off).
    pub wave: Option<u64>,
    /// The token peers of the wave ask with, and are asked with.
    #[serde(default)]
    pub token: Option<String>,
    /// The other members serving now.
    #[serde(default)]
    pub peers: Vec<Member>,
}

/// A member that refused, failed or sent a bad chunk is asked no more.
struct Peer {
    member: Member,
    good: AtomicBool,
    /// Whether it was in the wave before this station joined (in the server's first
    /// answer): only such a member can hold chunks this station seeds.
    before_me: bool,
    /// Its answers in a row to "what do you hold" that held nothing: past
    /// [`HELD_MISSES`] it is asked so no more (it holds nothing this station seeds).
    held_misses: AtomicU32,
}

/// Empty answers in a row after which a member is no longer asked what it holds.
const HELD_MISSES: u32 = 3;

/// What the exchange did, for the restore's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SwarmStats {
    /// Chunks taken from peers (for the restore, or held by another to seed), and
    /// their compressed bytes.
    pub chunks_from_peers: u64,
    pub bytes_from_peers: u64,
    /// Chunks this station fetched from the server (for itself and as a seeder).
    pub chunks_from_server: u64,
    pub peers_dropped: u64,
    /// Chunks sent to peers, and their bytes.
    pub chunks_served: u64,
    pub bytes_served: u64,
}

/// Chunks a seeder fetched from the server, verified, for its peers and itself.
#[derive(Default)]
struct Cache {
    slots: HashMap<ChunkId, Slot>,
    order: VecDeque<ChunkId>,
    bytes: usize,
}

enum Slot {
    /// A thread is fetching it from the server.
    Fetching,
    Ready(Arc<Vec<u8>>),
}

impl Cache {
    fn insert(&mut self, id: ChunkId, body: Arc<Vec<u8>>) {
        self.bytes += body.len();
        self.slots.insert(id, Slot::Ready(body));
        self.order.push_back(id);
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(Slot::Ready(b)) = self.slots.get(&old) {
                self.bytes -= b.len();
                self.slots.remove(&old);
            }
        }
    }

    fn remove(&mut self, id: &ChunkId) {
        if let Some(Slot::Ready(b)) = self.slots.get(id) {
            self.bytes -= b.len();
            self.slots.remove(id);
        }
    }
}

/// How `station` ranks as the seeder of `id` (rendezvous hashing): the highest of
/// the wave's members seeds it.
fn rank(id: &ChunkId, station: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&id.0);
    h.update(station.as_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A restore's source of chunks in a wave: each chunk from its seeder (a peer, or
/// the server when this station is the seeder), the server as the fallback; and
/// what this station serves to the others.
pub struct Swarm<'a, S: Fetch> {
    server: &'a S,
    me: String,
    shelf: Shelf,
    cache: Mutex<Cache>,
    fetched: Condvar,
    peers: RwLock<Vec<Arc<Peer>>>,
    /// Whether the server said who is in the wave yet.
    joined: AtomicBool,
    token: RwLock<Option<String>>,
    agent: ureq::Agent,
    pace: &'a (dyn Fn(u64) + Sync),
    /// Which peer sent each chunk not yet written (to drop it should the chunk fail
    /// verification), and the chunks to take from the server only.
    sent_by: Mutex<HashMap<ChunkId, Arc<Peer>>>,
    server_only: Mutex<HashSet<ChunkId>>,
    from_peers: AtomicU64,
    peer_bytes: AtomicU64,
    from_server: AtomicU64,
    dropped: AtomicU64,
}

/// Where a chunk is to be asked for, this round.
#[derive(Clone)]
enum Source {
    /// This station seeds it: its cache, else the server.
    Seeded,
    Peer(Arc<Peer>),
}

impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Seeded, Source::Seeded) => true,
            (Source::Peer(a), Source::Peer(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<'a, S: Fetch> Swarm<'a, S> {
    /// A swarm for the station `me` (its name as the server gives it to the others),
    /// fetching from `server` and peers; `pace` is called with the bytes of every
    /// peer answer (the station's bandwidth cap).
    pub fn new(server: &'a S, me: &str, pace: &'a (dyn Fn(u64) + Sync)) -> Swarm<'a, S> {
        Swarm {
            server,
            me: me.to_owned(),
            shelf: Shelf::default(),
            cache: Mutex::new(Cache::default()),
            fetched: Condvar::new(),
            peers: RwLock::new(Vec::new()),
            joined: AtomicBool::new(false),
            token: RwLock::new(None),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout_read(Duration::from_secs(20))
                .timeout_write(Duration::from_secs(10))
                .max_idle_connections_per_host(8)
                .build(),
            pace,
            sent_by: Mutex::new(HashMap::new()),
            server_only: Mutex::new(HashSet::new()),
            from_peers: AtomicU64::new(0),
            peer_bytes: AtomicU64::new(0),
            from_server: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// This station's shelf: what its restore verified on its disk.
    pub fn shelf(&self) -> &Shelf {
        &self.shelf
    }

    /// Take the server's latest word on the wave: its token and the members serving.
    /// A member dropped stays dropped while it serves from the same address.
    pub fn update(&self, wave: &Wave) {
        *self.token.write().expect("not poisoned") = wave.token.clone();
        let mut peers = self.peers.write().expect("not poisoned");
        let old = std::mem::take(&mut *peers);
        let before_me = !self.joined.swap(true, Relaxed);
        for m in wave.peers.iter().filter(|m| m.station != self.me) {
            match old.iter().find(|p| p.member == *m) {
                Some(p) => peers.push(p.clone()),
                None => peers.push(Arc::new(Peer {
                    member: m.clone(),
                    good: AtomicBool::new(true),
                    before_me,
                    held_misses: AtomicU32::new(0),
                })),
            }
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> SwarmStats {
        let (chunks_served, bytes_served) = self.shelf.served();
        SwarmStats {
            chunks_from_peers: self.from_peers.load(Relaxed),
            bytes_from_peers: self.peer_bytes.load(Relaxed),
            chunks_from_server: self.from_server.load(Relaxed),
            peers_dropped: self.dropped.load(Relaxed),
            chunks_served,
            bytes_served,
        }
    }

    fn drop_peer(&self, peer: &Peer) {
        if peer.good.swap(false, Relaxed) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Whether `id` is to come from the server only: no wave, or a peer's copy of
    /// it failed verification.
    fn server_only(&self, id: &ChunkId) -> bool {
        self.token.read().expect("not poisoned").is_none()
            || self.server_only.lock().expect("not poisoned").contains(id)
    }

    /// The good peer not in `skip` that ranks highest for `id`, and its rank.
    fn best_peer(&self, id: &ChunkId, skip: &[SocketAddr]) -> Option<(u64, Arc<Peer>)> {
        self.peers
            .read()
            .expect("not poisoned")
            .iter()
            .filter(|p| p.good.load(Relaxed) && !skip.contains(&p.member.address))
            .map(|p| (rank(id, &p.member.station), p.clone()))
            .max_by_key(|(r, _)| *r)
    }

    /// The seeder of `id` among this station and the good peers not in `skip`.
    fn seeder(&self, id: &ChunkId, skip: &[SocketAddr]) -> Source {
        if self.server_only(id) {
            return Source::Seeded;
        }
        match self.best_peer(id, skip) {
            Some((r, peer)) if r > rank(id, &self.me) => Source::Peer(peer),
            _ => Source::Seeded,
        }
    }

    /// Chunks this station seeds but lacks, from the good peer that ranks next for
    /// each (the one that seeded it before this station joined, or took it from its
    /// own predecessor), asked for what it holds only, when that peer was in the
    /// wave before this station and has held something lately. Each verified; a
    /// peer that sends a bad one is dropped. `None` for one no peer holds.
    fn held_elsewhere(&self, ids: &[ChunkId]) -> Vec<Option<Vec<u8>>> {
        let mut out = vec![None; ids.len()];
        let mut plan: Vec<(Arc<Peer>, Vec<usize>)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if self.server_only(id) {
                continue;
            }
            let Some((_, peer)) = self.best_peer(id, &[]) else {
                continue;
            };
            if !peer.before_me || peer.held_misses.load(Relaxed) >= HELD_MISSES {
                continue;
            }
            match plan.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &peer)) {
                Some((_, list)) => list.push(i),
                None => plan.push((peer, vec![i])),
            }
        }
        for (peer, list) in plan {
            let these: Vec<ChunkId> = list.iter().map(|&i| ids[i]).collect();
            let Some(said) = self.ask(&peer, &these, true) else {
                continue;
            };
            match said.iter().any(Option::is_some) {
                true => peer.held_misses.store(0, Relaxed),
                false => _ = peer.held_misses.fetch_add(1, Relaxed),
            }
            for (&i, body) in list.iter().zip(said) {
                let Some(body) = body else { continue };
                if crate::decode_chunk(&ids[i], &body, MAX_CHUNK_SIZE as usize).is_err() {
                    self.drop_peer(&peer);
                    continue;
                }
                self.from_peers.fetch_add(1, Relaxed);
                self.peer_bytes.fetch_add(body.len() as u64, Relaxed);
                out[i] = Some(body);
            }
        }
        out
    }

    /// Chunks this station seeds: from its cache, else from the peer that held them
    /// before it joined ([`Swarm::held_elsewhere`]), else from the server (one
    /// request for all that no other thread is fetching already), verified and
    /// cached for the peers that will ask. A chunk another thread is fetching is
    /// waited for.
    /// With `disk`, a chunk the restore has written in the meantime is read from
    /// there.
    fn seeded(&self, ids: &[ChunkId], disk: Option<&File>) -> Vec<Result<Vec<u8>, Error>> {
        let mut out: Vec<Option<Result<Vec<u8>, Error>>> = (0..ids.len()).map(|_| None).collect();
        loop {
            let mut claimed = Vec::new();
            let mut waiting = false;
            {
                let mut cache = self.cache.lock().expect("not poisoned");
                for (i, id) in ids.iter().enumerate() {
                    if out[i].is_some() {
                        continue;
                    }
                    match cache.slots.get(id) {
                        Some(Slot::Ready(body)) => out[i] = Some(Ok(body.to_vec())),
                        Some(Slot::Fetching) => waiting = true,
                        None => {
                            // Written since the caller looked (`have` holds this lock).
                            match disk.and_then(|d| self.shelf.read(id, d)) {
                                Some(body) => out[i] = Some(Ok(body)),
                                None => {
                                    cache.slots.insert(*id, Slot::Fetching);
                                    claimed.push(i);
                                }
                            }
                        }
                    }
                }
            }
            if !claimed.is_empty() {
                let these: Vec<ChunkId> = claimed.iter().map(|&i| ids[i]).collect();
                let mut held = self.held_elsewhere(&these);
                let missing: Vec<ChunkId> = these
                    .iter()
                    .zip(&held)
                    .filter(|(_, h)| h.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                let mut got = match missing.is_empty() {
                    true => Vec::new(),
                    false => self.server.fetch_many(&missing),
                }
                .into_iter();
                let mut cache = self.cache.lock().expect("not poisoned");
                for (&i, held) in claimed.iter().zip(&mut held) {
                    let id = ids[i];
                    cache.slots.remove(&id);
                    let checked = match held.take() {
                        // Verified by held_elsewhere.
                        Some(b) => Ok(b),
                        None => got
                            .next()
                            .unwrap_or_else(|| {
                                Err(Error::Fetch {
                                    url: "chunk batch".into(),
                                    why: format!("no answer for chunk {id}"),
                                })
                            })
                            .and_then(|b| {
                                crate::decode_chunk(&id, &b, MAX_CHUNK_SIZE as usize)?;
                                self.from_server.fetch_add(1, Relaxed);
                                Ok(b)
                            }),
                    };
                    if let Ok(b) = &checked {
                        cache.insert(id, Arc::new(b.clone()));
                    }
                    out[i] = Some(checked);
                }
                self.fetched.notify_all();
            } else if waiting {
                let cache = self.cache.lock().expect("not poisoned");
                let still = ids.iter().zip(&out).any(|(id, o)| {
                    o.is_none() && matches!(cache.slots.get(id), Some(Slot::Fetching))
                });
                if still {
                    let _ = self
                        .fetched
                        .wait_timeout(cache, Duration::from_millis(200))
                        .expect("not poisoned");
                }
            } else {
                break;
            }
        }
        out.into_iter()
            .map(|r| r.expect("every chunk answered"))
            .collect()
    }

    /// What to send a peer that asks for `ids`: each from the shelf (read from
    /// `disk`, compressed), else one this station seeds; `None` for one it cannot
    /// give. Nothing once the shelf is closed.
    fn serve(&self, ids: &[ChunkId], disk: &File) -> Vec<Option<Vec<u8>>> {
        if !self.shelf.open.load(Relaxed) {
            return vec![None; ids.len()];
        }
        let mut out: Vec<Option<Vec<u8>>> =
            ids.iter().map(|id| self.shelf.read(id, disk)).collect();
        let rest: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if !rest.is_empty() {
            let these: Vec<ChunkId> = rest.iter().map(|&i| ids[i]).collect();
            for (&i, got) in rest.iter().zip(self.seeded(&these, Some(disk))) {
                out[i] = got.ok();
            }
        }
        self.shelf.count_served(&out);
        out
    }

    /// What to send a peer that asks for the chunks of `ids` this station holds:
    /// each from the shelf, else a verified one in the cache; nothing fetched, and
    /// nothing waited for (a fetch under way may be this peer's own request).
    fn held(&self, ids: &[ChunkId], disk: &File) -> Vec<Option<Vec<u8>>> {
        if !self.shelf.open.load(Relaxed) {
            return vec![None; ids.len()];
        }
        let out: Vec<Option<Vec<u8>>> = ids
            .iter()
            .map(|id| {
                self.shelf.read(id, disk).or_else(|| {
                    match self.cache.lock().expect("not poisoned").slots.get(id) {
                        Some(Slot::Ready(body)) => Some(body.to_vec()),
                        _ => None,
                    }
                })
            })
            .collect();
        self.shelf.count_served(&out);
        out
    }

    /// Ask `peer` for `ids` (with `held`, only those it holds): each chunk it
    /// sent, or `None` for one it does not have; `None` for all when it failed us
    /// (it is dropped then).
    fn ask(&self, peer: &Peer, ids: &[ChunkId], held: bool) -> Option<Vec<Option<Vec<u8>>>> {
        let token = self.token.read().expect("not poisoned").clone()?;
        let base = format!("http://{}", peer.member.address);
        let list = || {
            let list: Vec<String> = ids.iter().map(ChunkId::to_string).collect();
            list.join(",")
        };
        let url = match ids {
            _ if held => format!("{base}/held?ids={}", list()),
            [id] => format!("{base}/chunks/{id}"),
            _ => format!("{base}/chunks?ids={}", list()),
        };
        let limit = ids.len() as u64 * (u64::from(MAX_CHUNK_SIZE) + (1 << 20));
        let resp = match self
            .agent
            .get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
        {
            Ok(resp) => resp,
            Err(ureq::Error::Status(404, _)) if ids.len() == 1 => return Some(vec![None]),
            Err(_) => {
                self.drop_peer(peer);
                return None;
            }
        };
        let mut body = Vec::new();
        let read = resp.into_reader().take(limit + 1).read_to_end(&mut body);
        if read.is_err() || body.len() as u64 > limit {
            self.drop_peer(peer);
            return None;
        }
        (self.pace)(body.len() as u64);
        if ids.len() == 1 && !held {
            return Some(vec![Some(body)]);
        }
        let Some(frames) = crate::http::unframe(&body, ids.len()) else {
            self.drop_peer(peer);
            return None;
        };
        Some(
            frames
                .into_iter()
                .map(|f| (!f.is_empty()).then_some(f))
                .collect(),
        )
    }
}

impl Shelf {
    /// Count the chunks of an answer to a peer.
    fn count_served(&self, answer: &[Option<Vec<u8>>]) {
        for body in answer.iter().flatten() {
            self.served_chunks.fetch_add(1, Relaxed);
            self.served_bytes.fetch_add(body.len() as u64, Relaxed);
        }
    }

    /// Chunk `id` read from `disk` and compressed as the store keeps chunks, if it is
    /// on the shelf.
    fn read(&self, id: &ChunkId, disk: &File) -> Option<Vec<u8>> {
        let (offset, len) = self.get(id)?;
        let mut data = vec![0u8; len as usize];
        disk.read_exact_at(&mut data, offset).ok()?;
        zstd::bulk::compress(&data, 1).ok()
    }
}

impl<S: Fetch> Fetch for Swarm<'_, S> {
    fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
        self.fetch_many(std::slice::from_ref(id))
            .pop()
            .unwrap_or(Err(Error::MissingChunk { id: *id }))
    }

    /// Each chunk from its seeder, one request per seeder; a chunk a peer cannot
    /// give goes to its next seeder, the chunks of a peer that failed too.
    fn fetch_many(&self, ids: &[ChunkId]) -> Vec<Result<Vec<u8>, Error>> {
        let mut out: Vec<Option<Result<Vec<u8>, Error>>> = (0..ids.len()).map(|_| None).collect();
        // Per chunk: the peers that did not have it.
        let mut skip: Vec<Vec<SocketAddr>> = vec![Vec::new(); ids.len()];
        loop {
            let mut plan: Vec<(Source, Vec<usize>)> = Vec::new();
            for i in (0..ids.len()).filter(|&i| out[i].is_none()) {
                let source = self.seeder(&ids[i], &skip[i]);
                match plan.iter_mut().find(|(s, _)| *s == source) {
                    Some((_, list)) => list.push(i),
                    None => plan.push((source, vec![i])),
                }
            }
            if plan.is_empty() {
                break;
            }
            // What this station seeds first: its peers are waiting for those.
            plan.sort_by_key(|(s, _)| !matches!(s, Source::Seeded));
            for (source, list) in plan {
                let these: Vec<ChunkId> = list.iter().map(|&i| ids[i]).collect();
                match source {
                    Source::Seeded => {
                        for (&i, got) in list.iter().zip(self.seeded(&these, None)) {
                            // A chunk the server sent damaged: as it came, for the
                            // restore to verify and fetch again.
                            out[i] = Some(match got {
                                Err(Error::CorruptChunk { id, .. }) => self.server.fetch(&id),
                                other => other,
                            });
                        }
                    }
                    Source::Peer(peer) => {
                        // None: the peer is dropped, and these go to their next seeder.
                        let Some(said) = self.ask(&peer, &these, false) else {
                            continue;
                        };
                        for (&i, s) in list.iter().zip(said) {
                            match s {
                                Some(body) => {
                                    self.from_peers.fetch_add(1, Relaxed);
                                    self.peer_bytes.fetch_add(body.len() as u64, Relaxed);
                                    self.sent_by
                                        .lock()
                                        .expect("not poisoned")
                                        .insert(ids[i], peer.clone());
                                    out[i] = Some(Ok(body));
                                }
                                None => skip[i].push(peer.member.address),
                            }
                        }
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.expect("every chunk answered"))
            .collect()
    }

    fn group_ids(&self, index: &ChunkId, first: u64, count: u64) -> Result<Vec<ChunkId>, Error> {
        self.server.group_ids(index, first, count)
    }

    fn have(&self, id: &ChunkId, offset: u64, len: usize) {
        self.sent_by.lock().expect("not poisoned").remove(id);
        // Under the cache's lock: a seeder's serving thread that finds the chunk
        // in neither place after this would fetch it again.
        let mut cache = self.cache.lock().expect("not poisoned");
        self.shelf.put(id, offset, len);
        cache.remove(id);
    }

    fn rejected(&self, id: &ChunkId) {
        let peer = self.sent_by.lock().expect("not poisoned").remove(id);
        if let Some(peer) = peer {
            self.drop_peer(&peer);
        }
        self.server_only.lock().expect("not poisoned").insert(*id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{import, ChunkStore, Index, Local, MIN_CHUNK_SIZE};

    const CS: usize = MIN_CHUNK_SIZE as usize;
    const TOKEN: &str = "wave-token";

    /// The server's side of a restore, counting the chunks it sends.
    struct Counting<'a> {
        local: Local<'a>,
        sent: AtomicU64,
    }

    impl Fetch for Counting<'_> {
        fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>, Error> {
            self.sent.fetch_add(1, Relaxed);
            self.local.fetch(id)
        }
        fn group_ids(
            &self,
            index: &ChunkId,
            first: u64,
            count: u64,
        ) -> Result<Vec<ChunkId>, Error> {
            self.local.group_ids(index, first, count)
        }
    }

    fn counting<'a>(store: &'a ChunkStore, index: &'a Index) -> Counting<'a> {
        Counting {
            local: Local { store, index },
            sent: AtomicU64::new(0),
        }
    }

    /// An image of 300 chunks of noise (three groups), imported.
    fn image(dir: &Path) -> (ChunkStore, Index, Vec<u8>) {
        let store = ChunkStore::open(dir).unwrap();
        let image = crate::sample::noise(300 * CS, 16);
        let raw = dir.join("image.raw");
        std::fs::write(&raw, &image).unwrap();
        let index = import(&store, &raw, MIN_CHUNK_SIZE as u64, |_| {})
            .unwrap()
            .index;
        (store, index, image)
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn wave_of(members: Vec<Member>) -> Wave {
        Wave {
            wave: Some(1),
            token: Some(TOKEN.into()),
            peers: members,
        }
    }

    /// `n` blank disks of the image's size in `dir`.
    fn blank_disks(dir: &Path, n: usize) -> Vec<std::path::PathBuf> {
        (0..n)
            .map(|i| {
                let d = dir.join(format!("disk-{i}"));
                std::fs::write(&d, vec![0u8; 300 * CS]).unwrap();
                d
            })
            .collect()
    }

    /// Serve each swarm's disk, until `stop`: the members `station-0`, `station-1`, ...
    fn serve_all<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        swarms: &[&'env Swarm<'env, Counting<'env>>],
        disks: &[std::path::PathBuf],
        stop: &'env AtomicBool,
    ) -> Vec<Member> {
        swarms
            .iter()
            .zip(disks)
            .enumerate()
            .map(|(i, (s, d))| Member {
                station: format!("station-{i}"),
                address: serve(scope, listener(), s, d, stop).unwrap(),
            })
            .collect()
    }

    /// What a wave of stations did.
    struct Outcome {
        disks: Vec<Vec<u8>>,
        stats: Vec<SwarmStats>,
        server_sent: u64,
        /// Bytes from peers the bandwidth cap was told of.
        paced: u64,
    }

    /// Restore `stations` blank disks of the image at once, each station serving the
    /// others; `liar` adds a member whose disk is noise but whose shelf names every
    /// chunk, `dead` one that does not answer.
    fn wave(dir: &Path, stations: usize, liar: bool, dead: bool) -> (Outcome, Vec<u8>) {
        let (store, index, image) = image(dir);
        let server = counting(&store, &index);
        let paced = AtomicU64::new(0);
        let pace = |b: u64| {
            paced.fetch_add(b, Relaxed);
        };
        let swarms: Vec<Swarm<Counting>> = (0..stations)
            .map(|i| Swarm::new(&server, &format!("station-{i}"), &pace))
            .collect();
        let disks = blank_disks(dir, stations);
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, crate::sample::noise(300 * CS, 99)).unwrap();
        let liar_swarm = Swarm::new(&server, "liar", &pace);
        for (i, id) in index.ids.iter().enumerate() {
            liar_swarm.shelf().put(id, (i * CS) as u64, CS);
        }
        let stop = AtomicBool::new(false);
        let summary = index.summary();
        std::thread::scope(|scope| {
            let mut members = serve_all(scope, &swarms.iter().collect::<Vec<_>>(), &disks, &stop);
            if liar {
                let address = serve(scope, listener(), &liar_swarm, &garbage, &stop).unwrap();
                members.push(Member {
                    station: "liar".into(),
                    address,
                });
            }
            if dead {
                members.push(Member {
                    station: "powered-off".into(),
                    address: listener().local_addr().unwrap(),
                });
            }
            let wave = wave_of(members);
            liar_swarm.update(&wave);
            for s in &swarms {
                s.update(&wave);
            }
            let restores: Vec<_> = swarms
                .iter()
                .zip(&disks)
                .map(|(s, d)| {
                    let summary = &summary;
                    scope.spawn(move || crate::restore(summary, d, s, 4, &|_, _| {}))
                })
                .collect();
            for r in restores {
                r.join().unwrap().unwrap();
            }
            stop.store(true, Relaxed);
        });
        let outcome = Outcome {
            disks: disks.iter().map(|d| std::fs::read(d).unwrap()).collect(),
            stats: swarms.iter().map(Swarm::stats).collect(),
            server_sent: server.sent.load(Relaxed),
            paced: paced.load(Relaxed),
        };
        (outcome, image)
    }

    #[test]
    fn a_wave_of_four_restores_every_disk_identical_with_the_server_sending_each_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let (o, image) = wave(dir.path(), 4, false, false);
        for (i, d) in o.disks.iter().enumerate() {
            assert!(d == &image, "station {i}'s disk differs from the image");
        }
        assert_eq!(
            o.server_sent, 300,
            "each of the 300 chunks once: {:?}",
            o.stats
        );
        let from_peers: u64 = o.stats.iter().map(|s| s.chunks_from_peers).sum();
        let served: u64 = o.stats.iter().map(|s| s.chunks_served).sum();
        assert_eq!(
            from_peers, 900,
            "three of four copies from peers: {:?}",
            o.stats
        );
        assert_eq!(from_peers, served, "every chunk a peer sent was one served");
        let peer_bytes: u64 = o.stats.iter().map(|s| s.bytes_from_peers).sum();
        // The cap sees every byte of the answers: the chunks and their 4-byte frames,
        // and the empty frames of the seeders' asks for what a peer held (each
        // chunk's seeder asks once).
        assert!(
            (peer_bytes..=peer_bytes + 4 * (from_peers + 300)).contains(&o.paced),
            "the bandwidth cap covers chunks from peers: {} paced, {peer_bytes} from peers",
            o.paced
        );
        assert!(
            o.stats.iter().all(|s| s.peers_dropped == 0),
            "{:?}",
            o.stats
        );
    }

    #[test]
    fn a_station_that_joins_late_takes_what_its_predecessor_fetched_from_it_not_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let (store, index, image) = image(dir.path());
        let server = counting(&store, &index);
        let pace = |_: u64| {};
        let (first, late) = (
            Swarm::new(&server, "station-0", &pace),
            Swarm::new(&server, "station-1", &pace),
        );
        let disks = blank_disks(dir.path(), 2);
        let summary = index.summary();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let members = serve_all(scope, &[&first, &late], &disks, &stop);
            // Alone in its wave, the first station seeds, so fetches, every chunk.
            first.update(&wave_of(Vec::new()));
            crate::restore(&summary, &disks[0], &first, 4, &|_, _| {}).unwrap();
            assert_eq!(server.sent.load(Relaxed), 300);
            // The second joins: it seeds about half the chunks now, all of which the
            // first holds.
            let wave = wave_of(members);
            first.update(&wave);
            late.update(&wave);
            crate::restore(&summary, &disks[1], &late, 4, &|_, _| {}).unwrap();
            stop.store(true, Relaxed);
        });
        assert!(
            std::fs::read(&disks[1]).unwrap() == image,
            "the late station's disk is the image"
        );
        assert_eq!(
            server.sent.load(Relaxed),
            300,
            "the server sent each chunk once: {:?} {:?}",
            first.stats(),
            late.stats()
        );
        assert_eq!(late.stats().chunks_from_peers, 300);
        assert_eq!(first.stats().chunks_served, 300);
    }

    /// A wave with a faulty member completes: every disk is the image, and every
    /// station dropped the faulty member.
    fn survives(stations: usize, liar: bool, dead: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (o, image) = wave(dir.path(), stations, liar, dead);
        for d in &o.disks {
            assert!(d == &image, "a disk differs from the image");
        }
        for s in &o.stats {
            assert_eq!(s.peers_dropped, 1, "the faulty member is dropped: {s:?}");
        }
    }

    #[test]
    fn a_peer_that_serves_corrupt_data_is_dropped_and_its_chunks_come_verified_from_elsewhere() {
        survives(2, true, false);
    }

    #[test]
    fn a_member_that_does_not_answer_is_dropped_and_the_wave_completes() {
        survives(3, false, true);
    }

    #[test]
    fn a_peer_refuses_callers_without_the_wave_token_and_anything_but_chunk_gets() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let data = crate::sample::noise(CS, 5);
        std::fs::write(&disk, &data).unwrap();
        let (store, index, _) = image(dir.path());
        let server = counting(&store, &index);
        let pace = |_: u64| {};
        let swarm = Swarm::new(&server, "me", &pace);
        swarm.update(&wave_of(Vec::new()));
        let id = ChunkId::of(&data);
        swarm.shelf().put(&id, 0, CS);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let addr = serve(scope, listener(), &swarm, &disk, &stop).unwrap();
            let ask = |auth: &str| {
                get(
                    addr,
                    &format!(
                        "GET /chunks/{id} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
                    ),
                )
            };
            assert!(ask("").starts_with("HTTP/1.1 403"), "no token");
            assert!(
                ask("Authorization: Bearer other-wave\r\n").starts_with("HTTP/1.1 403"),
                "another wave's token"
            );
            let good = ask("Authorization: Bearer wave-token\r\n");
            assert!(good.starts_with("HTTP/1.1 200"), "{good:.80}");
            assert_eq!(
                swarm.stats().chunks_served,
                1,
                "only the good request was served"
            );
            let authorized = |target: String| {
                get(
                    addr,
                    &format!(
                        "GET {target} HTTP/1.1\r\nAuthorization: Bearer wave-token\r\nConnection: close\r\n\r\n"
                    ),
                )
            };
            let unknown = authorized(format!("/chunks/{}", ChunkId::of(b"in no image")));
            assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown:.80}");
            // Asked for what it holds only, it fetches nothing: an empty frame.
            let held = authorized(format!("/held?ids={}", ChunkId::of(b"in no image either")));
            assert!(held.starts_with("HTTP/1.1 200"), "{held:.80}");
            assert!(held.ends_with("\r\n\r\n\0\0\0\0"), "{held:?}");
            swarm.shelf().close();
            let closed = ask("Authorization: Bearer wave-token\r\n");
            assert!(closed.starts_with("HTTP/1.1 404"), "closed: {closed:.80}");
            for (request, status) in [
                (
                    "POST /chunks/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                    "405",
                ),
                ("GET /etc/passwd HTTP/1.1\r\n\r\n", "404"),
                ("GET /chunks/../../etc/passwd HTTP/1.1\r\n\r\n", "404"),
                ("GET /chunks/x HTTP/2\r\n\r\n", "505"),
                ("garbage\r\n\r\n", "400"),
            ] {
                let got = get(addr, request);
                assert!(
                    got.starts_with(&format!("HTTP/1.1 {status}")),
                    "{request:?}: {got:.80}"
                );
            }
            let long = format!(
                "GET /chunks/x HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(MAX_HEAD)
            );
            assert!(get(addr, &long).starts_with("HTTP/1.1 431"));
            stop.store(true, Relaxed);
        });
        assert_eq!(
            server.sent.load(Relaxed),
            1,
            "the unknown id was asked of the server once"
        );
    }

    #[test]
    fn requests_are_parsed_strictly() {
        let id = ChunkId::of(b"x");
        let r = parse_request(
            format!("GET /chunks/{id} HTTP/1.1\r\nauthorization: Bearer  t \r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.ask, Ask::One(id));
        assert_eq!(r.token.as_deref(), Some("t"));
        assert!(r.keep_alive);
        let r = parse_request(format!("GET /chunks?ids={id},{id} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(r.ask, Ask::Many(vec![id, id]));
        assert!(!r.keep_alive, "HTTP/1.0 closes by default");
        let r = parse_request(format!("GET /held?ids={id} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
        assert_eq!(r.ask, Ask::Held(vec![id]));
        let many = vec![id.to_string(); MAX_BATCH + 1].join(",");
        for (head, status) in [
            (format!("GET /chunks?ids={many} HTTP/1.1\r\n\r\n"), 400),
            (format!("GET /held?ids={many} HTTP/1.1\r\n\r\n"), 400),
            (format!("GET /held/{id} HTTP/1.1\r\n\r\n"), 404),
            (format!("GET /chunks?ids={id},zz HTTP/1.1\r\n\r\n"), 400),
            (
                format!("GET /chunks/{id} HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
                400,
            ),
            (
                format!("GET /chunks/{id} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
                400,
            ),
            (format!("GET /chunks/{id} HTTP/1.1\r\nbroken\r\n\r\n"), 400),
            (format!("GET  /chunks/{id} HTTP/1.1\r\n\r\n"), 400),
        ] {
            assert_eq!(
                parse_request(head.as_bytes()).unwrap_err().0,
                status,
                "{head:?}"
            );
        }
        assert_eq!(parse_request(&[0xff, 0xfe]).unwrap_err().0, 400);
    }
}
