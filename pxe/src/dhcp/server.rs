//! The ProxyDHCP sockets and their receive loops: receive -> classify -> decide ->
//! build -> send. A bad packet is logged and dropped; only a socket failure ends a loop.
//!
//! The loops are plain threads doing blocking receives, one per core on port 67 and
//! one on port 4011. The work per packet is synchronous and short, and the kernel
//! wakes exactly one blocked reader per datagram. With async tasks every waiting task
//! was woken for every packet, which measurably lengthened the tail of a burst.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::{Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::UdpSocket;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::classify::{classify, Listener};
use super::offer::{boot_file, build, reply_addr, BootFiles};
use crate::stats::DhcpStats;
use crate::{BootDecision, BootPolicy, BootStep, Error, Observation};

/// Settings of the ProxyDHCP server.
#[derive(Clone, Debug)]
pub struct DhcpSettings {
    /// Address for the port-67 socket (production: 0.0.0.0:67 with `interface`).
    pub listen: SocketAddr,
    /// Address for the port-4011 socket.
    pub pxe_listen: SocketAddr,
    /// Bind both sockets to this interface (SO_BINDTODEVICE), so that broadcasts are
    /// received and sent on the lab network only.
    pub interface: Option<String>,
    /// Our address as stations see it: server identifier, siaddr.
    pub server_ip: Ipv4Addr,
    /// Where answers to clients without an address go (normally 255.255.255.255:68).
    pub broadcast: SocketAddrV4,
    /// Boot files and URLs to hand out.
    pub files: BootFiles,
    /// The relay agents whose giaddr is honoured (answers go back through them);
    /// from anyone else a giaddr is ignored and the client is answered here.
    pub relays: Vec<Ipv4Addr>,
}

/// A bound ProxyDHCP server, ready to [`run`](DhcpServer::run).
pub struct DhcpServer {
    dhcp: UdpSocket,
    pxe: UdpSocket,
    settings: Arc<DhcpSettings>,
    policy: Arc<dyn BootPolicy>,
    stats: Arc<DhcpStats>,
}

impl DhcpServer {
    /// Bind both sockets. Fails with the address that could not be bound.
    pub fn bind(settings: DhcpSettings, policy: Arc<dyn BootPolicy>) -> Result<Self, Error> {
        let dhcp = bind_udp(settings.listen, settings.interface.as_deref(), "dhcp")?;
        let pxe = bind_udp(
            settings.pxe_listen,
            settings.interface.as_deref(),
            "pxe (4011)",
        )?;
        Ok(DhcpServer {
            dhcp,
            pxe,
            settings: Arc::new(settings),
            policy,
            stats: Arc::default(),
        })
    }

    /// Its counts (answers by firmware and listener, drops by reason).
    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    /// The bound addresses (port 67 socket, port 4011 socket); useful with port 0.
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.dhcp.local_addr().expect("bound socket has an address"),
            self.pxe.local_addr().expect("bound socket has an address"),
        )
    }

    /// Serve until `cancel` fires. Returns an error only when a socket fails.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let DhcpServer {
            dhcp,
            pxe,
            settings,
            policy,
            stats,
        } = self;
        info!(dhcp = %dhcp.local_addr().map_err(|source| Error::Socket { what: "dhcp", source })?,
              pxe = %pxe.local_addr().map_err(|source| Error::Socket { what: "pxe", source })?,
              server_ip = %settings.server_ip, "proxydhcp listening");
        let dhcp = Arc::new(dhcp);
        let pxe = Arc::new(pxe);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut tasks = tokio::task::JoinSet::new();
        let loops = (0..workers)
            .map(|_| (dhcp.clone(), Listener::Dhcp))
            .chain(std::iter::once((pxe, Listener::Pxe)));
        for (socket, listener) in loops {
            let (settings, policy, cancel) = (settings.clone(), policy.clone(), cancel.clone());
            let stats = stats.clone();
            tasks.spawn_blocking(move || {
                serve(
                    &socket,
                    listener,
                    &settings,
                    policy.as_ref(),
                    &stats,
                    &cancel,
                )
            });
        }
        crate::workers::supervise(tasks, &cancel, "dhcp").await
    }
}

/// How often a blocked receive looks up to see whether the server is stopping.
const CANCEL_POLL: Duration = Duration::from_millis(200);

fn serve(
    socket: &UdpSocket,
    listener: Listener,
    settings: &DhcpSettings,
    policy: &dyn BootPolicy,
    stats: &DhcpStats,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let what = match listener {
        Listener::Dhcp => "dhcp",
        Listener::Pxe => "pxe (4011)",
    };
    // Large enough for any DHCP packet, including jumbo-frame ones.
    let mut buf = vec![0u8; 9000];
    while !cancel.is_cancelled() {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP port unreachable from an earlier send surfaces here on Linux; it
            // concerns that client only.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(source) => return Err(Error::Socket { what, source }),
        };
        let (reply, to, firmware) = match answer(&buf[..len], from, listener, settings, policy) {
            Ok(answer) => answer,
            Err(reason) => {
                stats.dropped(reason);
                continue;
            }
        };
        match socket.send_to(&reply, to) {
            Ok(_) => stats.answered(firmware, listener as usize),
            Err(e) => {
                // A send to one client failing (no route, unreachable) must not stop
                // the server for everybody else.
                warn!(%to, error = %e, "send failed");
                stats.dropped("send-failed");
            }
        }
    }
    Ok(())
}

/// One packet in, at most one answer out (with the firmware it is for), or why not.
/// Synchronous and allocation-light: this is the hot path of a classroom switching
/// on at once.
fn answer(
    bytes: &[u8],
    from: SocketAddr,
    listener: Listener,
    settings: &DhcpSettings,
    policy: &dyn BootPolicy,
) -> Result<(Vec<u8>, SocketAddr, crate::Firmware), &'static str> {
    let mut request = match classify(bytes, listener, settings.server_ip) {
        Ok(r) => r,
        Err(skip) => {
            debug!(%from, ?listener, reason = %skip, "ignored packet");
            return Err(skip.name());
        }
    };
    // A giaddr counts only from a relay agent we were told of: anyone else could
    // send our answers to an address of their choosing.
    let giaddr = request.message.giaddr();
    if !giaddr.is_unspecified() {
        let relayed = matches!(from.ip(), IpAddr::V4(src) if settings.relays.contains(&src));
        if !relayed {
            debug!(%from, %giaddr, "giaddr from a sender that is not in dhcp.relays: answered locally");
            request.message.set_giaddr(Ipv4Addr::UNSPECIFIED);
        }
    }
    // An address the packet claims (ciaddr, option 50) is the station's only when the
    // packet comes from it, from no address yet, or through a relay (from giaddr):
    // anyone can write another station's address into a packet of their own.
    if let (Some(ip), IpAddr::V4(src)) = (request.machine.ip, from.ip()) {
        let giaddr = request.message.giaddr();
        if !src.is_unspecified() && src != ip && (giaddr.is_unspecified() || src != giaddr) {
            debug!(%from, claimed = %ip, "address claimed from another address: not the station's");
            request.machine.ip = None;
        }
    }
    let xid = request.message.xid();
    let span = info_span!("dhcp", mac = %request.machine.mac, xid = format_args!("{xid:08x}"));
    let _enter = span.enter();
    let step = match listener {
        Listener::Dhcp => BootStep::DhcpOffer,
        Listener::Pxe => BootStep::Pxe4011,
    };
    if policy.decide(&request.machine, step) == BootDecision::Ignore {
        debug!("policy: ignore");
        return Err("policy-ignore");
    }
    let loader = policy.loader(&request.machine);
    let Some(file) = boot_file(&request.machine, &settings.files, loader) else {
        info!(arch = ?request.machine.arch, firmware = ?request.machine.firmware, ?loader, "no boot file for this firmware");
        return Err("no-boot-file");
    };
    let reply = build(&request, &file, settings.server_ip);
    let mut out = Vec::with_capacity(400);
    if let Err(e) = reply.encode(&mut Encoder::new(&mut out)) {
        warn!(error = %e, "cannot encode reply");
        return Err("encode-failed");
    }
    let to = reply_addr(&request, listener, from, settings.broadcast);
    debug!(%to, file = file.as_str(), kind = ?request.kind, "answer");
    let boot_file = file.as_str().to_owned();
    let machine = request.machine;
    let firmware = machine.firmware;
    policy.observe(match listener {
        Listener::Dhcp => Observation::DhcpOffer {
            machine,
            xid,
            boot_file,
        },
        Listener::Pxe => Observation::Pxe4011 {
            machine,
            xid,
            boot_file,
        },
    });
    Ok((out, to, firmware))
}

fn bind_udp(
    addr: SocketAddr,
    interface: Option<&str>,
    what: &'static str,
) -> Result<UdpSocket, Error> {
    let err = |source| Error::Bind { what, addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_broadcast(true).map_err(err)?;
    // A classroom powering on sends hundreds of DISCOVERs within milliseconds; the
    // default receive buffer holds only about a hundred of them.
    let _ = socket.set_recv_buffer_size(4 << 20);
    if let Some(name) = interface {
        socket.bind_device(Some(name.as_bytes())).map_err(err)?;
    }
    socket.set_read_timeout(Some(CANCEL_POLL)).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}
