//! Power: Wake-on-LAN to the station's room broadcast address, and reboots
//! through the station's agent (a queued command, see `service::agent`). Campaigns resend
//! a wake when the station does not PXE-boot in time.

use std::net::{Ipv4Addr, UdpSocket};

use pxe::MacAddr;

use crate::config::RoomConfig;

/// A magic packet that could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("Wake-on-LAN for {mac} to {to} (room {room}): {source}")]
pub struct WakeError {
    pub mac: MacAddr,
    pub to: String,
    pub room: String,
    pub source: std::io::Error,
}

/// Send a magic packet for `mac` into `room`: to its broadcast address and port
/// (9 in a real room, another on a simulated one), from its source address when it
/// names one. One path of our own, for a reason: wol-rs sends to port 9 only (a
/// simulated room without root listens elsewhere), the `wol` crate that takes a port
/// is EUPL-1.2 (copyleft, against this project's MIT OR Apache-2.0), and
/// wake-on-lan 0.2 builds the packet with `mem::uninitialized`.
pub fn wake(mac: MacAddr, room: &RoomConfig) -> Result<(), WakeError> {
    let source = room.wol_source.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let sent = UdpSocket::bind((source, 0)).and_then(|socket| {
        socket.set_broadcast(true)?;
        socket.send_to(&magic_packet(mac), (room.wol_broadcast, room.wol_port))
    });
    sent.map(drop).map_err(|source| WakeError {
        mac,
        to: format!("{}:{}", room.wol_broadcast, room.wol_port),
        room: room.name.clone(),
        source,
    })
}

/// The magic packet: six 0xff, then the MAC sixteen times.
pub fn magic_packet(mac: MacAddr) -> [u8; 102] {
    let mut packet = [0xffu8; 102];
    for copy in packet[6..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac.octets());
    }
    packet
}

/// The room of a station, by name, from the configuration.
pub fn room<'a>(rooms: &'a [RoomConfig], name: Option<&str>) -> Option<&'a RoomConfig> {
    let name = name?;
    rooms.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The packet as the Wake-on-LAN spec (AMD's Magic Packet) has it, spelled out.
    fn expected(mac: MacAddr) -> Vec<u8> {
        let mut packet = vec![0xff; 6];
        for _ in 0..16 {
            packet.extend_from_slice(&mac.octets());
        }
        packet
    }

    #[test]
    fn a_magic_packet_reaches_the_rooms_address_on_port_9() {
        // A room of its own on loopback. Port 9 needs root (or CAP_NET_BIND_SERVICE)
        // to listen on: CI runs as root; elsewhere only the other port is tested.
        let room_ip = Ipv4Addr::new(127, 77, 0, 9);
        let room = RoomConfig {
            name: "101".into(),
            wol_broadcast: room_ip,
            wol_source: Some(Ipv4Addr::LOCALHOST),
            wol_port: 9,
            secure_boot: None,
            peers: None,
        };
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let mut buf = [0u8; 200];
        match UdpSocket::bind((room_ip, 9)) {
            Ok(listener) => {
                listener
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                wake(mac, &room).unwrap();
                let (n, _) = listener.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &expected(mac)[..], "the magic packet on port 9");
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                eprintln!("not root: port 9 is tested in CI, not here");
            }
        }
        // A simulated room on another port gets the same packet.
        let other = UdpSocket::bind((room_ip, 0)).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sim = RoomConfig {
            wol_port: other.local_addr().unwrap().port(),
            ..room.clone()
        };
        wake(mac, &sim).unwrap();
        let (n, _) = other.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &expected(mac)[..]);
        let rooms = [room];
        assert_eq!(super::room(&rooms, Some("101")).unwrap().name, "101");
        assert!(super::room(&rooms, Some("102")).is_none());
        assert!(super::room(&rooms, None).is_none());
    }
}
