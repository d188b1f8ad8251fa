//! Power: Wake-on-LAN (the `wol` crate) to the station's room broadcast address, and reboots
//! through the station's agent (a queued command, see `service::agent`). Campaigns resend
//! a wake when the station does not PXE-boot in time.

use std::net::Ipv4Addr;

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
/// (9 in a real room), from its source address when it names one, through the `wol`
/// crate on a socket of ours.
pub fn wake(mac: MacAddr, room: &RoomConfig) -> Result<(), WakeError> {
    use wol::SendMagicPacket;
    let to = (room.wol_broadcast, room.wol_port);
    let sent = std::net::UdpSocket::bind((room.wol_source.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))
        .and_then(|socket| {
            socket.set_broadcast(true)?;
            socket.send_magic_packet(wol::MacAddress::new(mac.octets()), None, to)
        });
    sent.map_err(|source| WakeError {
        mac,
        to: format!("{}:{}", room.wol_broadcast, room.wol_port),
        room: room.name.clone(),
        source,
    })
}

/// The room of a station, by name, from the configuration.
pub fn room<'a>(rooms: &'a [RoomConfig], name: Option<&str>) -> Option<&'a RoomConfig> {
    let name = name?;
    rooms.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Six 0xff, then the MAC sixteen times.
    fn magic_packet(mac: MacAddr) -> Vec<u8> {
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
                assert_eq!(
                    &buf[..n],
                    &magic_packet(mac)[..],
                    "the magic packet on port 9"
                );
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
        assert_eq!(&buf[..n], &magic_packet(mac)[..]);
        let rooms = [room];
        assert_eq!(super::room(&rooms, Some("101")).unwrap().name, "101");
        assert!(super::room(&rooms, Some("102")).is_none());
        assert!(super::room(&rooms, None).is_none());
    }
}
