//! One read transfer on its own socket and thread: OACK, then windows of DATA blocks
//! (one block per window is RFC 1350's lock-step), retransmitted from the first
//! unacknowledged block on timeout.

use std::fs::File;
use std::io;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::packet::{self, ErrorCode, Negotiated, Reply};

/// Retransmissions of one window before the transfer is given up.
const MAX_RETRIES: u32 = 5;

/// What is being sent.
pub enum Source {
    /// A cached file.
    Memory(Arc<[u8]>),
    /// A file too large for the cache, read block by block.
    File { file: File, size: u64 },
}

impl Source {
    pub fn size(&self) -> u64 {
        match self {
            Source::Memory(bytes) => bytes.len() as u64,
            Source::File { size, .. } => *size,
        }
    }

    /// Append block `index` (1-based) of `block_size` bytes to `out`.
    fn block(&self, index: u64, block_size: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let start = (index - 1) * block_size as u64;
        let len = self.size().saturating_sub(start).min(block_size as u64) as usize;
        match self {
            Source::Memory(bytes) => {
                out.extend_from_slice(&bytes[start as usize..start as usize + len])
            }
            Source::File { file, .. } => {
                let at = out.len();
                out.resize(at + len, 0);
                file.read_exact_at(&mut out[at..], start)?;
            }
        }
        Ok(())
    }
}

/// How a transfer ended, other than by success.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("client sent error {0}")]
    Client(u16),
    #[error("no acknowledgement after {0} retransmissions")]
    TimedOut(u32),
    #[error("server is stopping")]
    Cancelled,
    #[error("the transfer took longer than {} s", MAX_TRANSFER.as_secs())]
    Deadline,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The longest a transfer may take, however slowly its client acknowledges: a slot
/// is not held for ever.
pub const MAX_TRANSFER: Duration = Duration::from_secs(300);

/// Send `source` to the peer `socket` is connected to. Returns the bytes sent.
pub fn send(
    socket: &UdpSocket,
    source: &Source,
    n: &Negotiated,
    cancel: &CancellationToken,
) -> Result<u64, TransferError> {
    let mut buf = [0u8; 1024];
    if !n.acknowledged.is_empty() {
        let oack = packet::oack(&n.acknowledged);
        // The OACK is block 0 of the exchange: the client acknowledges it with ACK 0.
        exchange(
            socket,
            cancel,
            n.timeout,
            &mut buf,
            |s| s.send(&oack).map(|_| ()),
            |ack| (ack == 0).then_some(()),
        )?;
    }
    // The last block is shorter than a full block, possibly empty.
    let blocks = source.size() / n.block_size as u64 + 1;
    let mut packet = Vec::with_capacity(4 + n.block_size);
    let mut base = 1u64; // first unacknowledged block
    let deadline = Instant::now() + MAX_TRANSFER;
    while base <= blocks {
        if Instant::now() > deadline {
            return Err(TransferError::Deadline);
        }
        let end = (base + u64::from(n.window)).min(blocks + 1); // one past the window
        let acked = exchange(
            socket,
            cancel,
            n.timeout,
            &mut buf,
            |s| {
                for index in base..end {
                    packet.clear();
                    packet.extend_from_slice(&packet::DATA.to_be_bytes());
                    // Block numbers wrap to 0 after 65535, as PXE clients expect.
                    packet.extend_from_slice(&(index as u16).to_be_bytes());
                    source.block(index, n.block_size, &mut packet)?;
                    s.send(&packet)?;
                }
                Ok(())
            },
            // An ACK names the last block the client has in order; anything in this
            // window moves the window on (an early one makes us resend from there).
            // Older ACKs are duplicates and ignored (no Sorcerer's Apprentice).
            |ack| {
                let offset = ack.wrapping_sub(base as u16) as u64;
                (offset < end - base).then_some(base + offset)
            },
        )?;
        base = acked + 1;
    }
    Ok(source.size())
}

/// Send with `transmit`, then wait for an ACK that `accept` maps to a block;
/// retransmit on timeout.
fn exchange<T>(
    socket: &UdpSocket,
    cancel: &CancellationToken,
    timeout: Duration,
    buf: &mut [u8],
    mut transmit: impl FnMut(&UdpSocket) -> io::Result<()>,
    accept: impl Fn(u16) -> Option<T>,
) -> Result<T, TransferError> {
    for _ in 0..=MAX_RETRIES {
        if cancel.is_cancelled() {
            let _ = socket.send(&packet::error(ErrorCode::NotDefined, "server is stopping"));
            return Err(TransferError::Cancelled);
        }
        transmit(socket)?;
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket.set_read_timeout(Some(left))?;
            let len = match socket.recv(buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            match packet::parse_reply(&buf[..len]) {
                Reply::Ack(block) => {
                    if let Some(v) = accept(block) {
                        return Ok(v);
                    }
                }
                Reply::Error(code) => return Err(TransferError::Client(code)),
                Reply::Other => {}
            }
        }
    }
    Err(TransferError::TimedOut(MAX_RETRIES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::Negotiated;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.connect(client.local_addr().unwrap()).unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        (server, client)
    }

    fn negotiated(block_size: usize, window: u16, oack: bool) -> Negotiated {
        Negotiated {
            block_size,
            window,
            timeout: Duration::from_millis(200),
            acknowledged: if oack {
                vec![("blksize".into(), block_size.to_string())]
            } else {
                vec![]
            },
        }
    }

    /// A client that ACKs the last block of each window (or every block), dropping
    /// the first copy of block `drop` once to force a retransmission.
    fn client(
        socket: UdpSocket,
        block_size: usize,
        window: u16,
        oack: bool,
        drop: Option<u16>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 70_000];
            let mut data = Vec::new();
            let mut expect: u16 = 1;
            let mut dropped = false;
            let mut in_window = 0u16;
            loop {
                let len = socket.recv(&mut buf).unwrap();
                let p = &buf[..len];
                match u16::from_be_bytes([p[0], p[1]]) {
                    6 => {
                        assert!(oack);
                        socket.send(&[0, 4, 0, 0]).unwrap();
                    }
                    3 => {
                        let block = u16::from_be_bytes([p[2], p[3]]);
                        if Some(block) == drop && !dropped {
                            dropped = true;
                            continue;
                        }
                        if block != expect {
                            // Out of order: ACK what we have so the server resends.
                            socket
                                .send(&[
                                    0,
                                    4,
                                    (expect.wrapping_sub(1) >> 8) as u8,
                                    expect.wrapping_sub(1) as u8,
                                ])
                                .unwrap();
                            in_window = 0;
                            continue;
                        }
                        data.extend_from_slice(&p[4..]);
                        expect = expect.wrapping_add(1);
                        in_window += 1;
                        let last = p.len() - 4 < block_size;
                        if in_window == window || last {
                            socket.send(&[0, 4, p[2], p[3]]).unwrap();
                            in_window = 0;
                        }
                        if last {
                            return data;
                        }
                    }
                    other => panic!("opcode {other}"),
                }
            }
        })
    }

    fn content(len: usize) -> Arc<[u8]> {
        (0..len)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn lock_step_transfer_delivers_every_byte_including_an_empty_last_block() {
        for len in [0, 1, 511, 512, 513, 5120] {
            let (server, c) = pair();
            let bytes = content(len);
            let handle = client(c, 512, 1, false, None);
            let sent = send(
                &server,
                &Source::Memory(bytes.clone()),
                &negotiated(512, 1, false),
                &CancellationToken::new(),
            )
            .unwrap();
            assert_eq!(sent, len as u64);
            assert_eq!(handle.join().unwrap(), &bytes[..], "length {len}");
        }
    }

    #[test]
    fn windowed_transfer_with_a_lost_block_resends_and_completes() {
        let (server, c) = pair();
        let bytes = content(100_000);
        let handle = client(c, 1468, 16, true, Some(20));
        send(
            &server,
            &Source::Memory(bytes.clone()),
            &negotiated(1468, 16, true),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(handle.join().unwrap(), &bytes[..]);
    }

    #[test]
    fn large_file_source_reads_blocks_from_disk() {
        let (server, c) = pair();
        let bytes = content(70_000);
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &bytes).unwrap();
        let source = Source::File {
            file: tmp.reopen().unwrap(),
            size: bytes.len() as u64,
        };
        let handle = client(c, 8192, 4, true, None);
        send(
            &server,
            &source,
            &negotiated(8192, 4, true),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(handle.join().unwrap(), &bytes[..]);
    }

    #[test]
    fn silent_client_times_out_and_client_error_aborts() {
        let (server, c) = pair();
        let n = Negotiated {
            timeout: Duration::from_millis(20),
            ..negotiated(512, 1, false)
        };
        let err = send(
            &server,
            &Source::Memory(content(2000)),
            &n,
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, TransferError::TimedOut(MAX_RETRIES)), "{err}");

        let (server, c2) = pair();
        drop(c);
        std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            c2.recv(&mut buf).unwrap();
            c2.send(b"\0\x05\0\x08tsize only\0").unwrap(); // error 8: option refused
        });
        let err = send(
            &server,
            &Source::Memory(content(2000)),
            &negotiated(512, 1, true),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(err, TransferError::Client(8)), "{err}");
    }
}
