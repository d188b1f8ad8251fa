//! Power: Wake-on-LAN (wol-rs) to the station's room broadcast address, and reboots
//! through the station's agent (a queued command, see `api::agent`). Campaigns resend
//! a wake when the station does not PXE-boot in time.

use std::net::IpAddr;

use pxe::MacAddr;

use crate::config::RoomConfig;

/// Send a magic packet for `mac` into `room` (UDP port 9 of its broadcast address).
pub fn wake(mac: MacAddr, room: &RoomConfig) -> Result<(), String> {
    wol::send_wol(
        wol::MacAddr(mac.octets()),
        Some(IpAddr::V4(room.wol_broadcast)),
        room.wol_source.map(IpAddr::V4),
    )
    .map_err(|e| {
        format!(
            "Wake-on-LAN for {mac} to {}:9 (room {}): {e}",
            room.wol_broadcast, room.name
        )
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
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    #[test]
    fn a_magic_packet_reaches_the_rooms_address_on_port_9() {
        // A room of its own on loopback (port 9 needs root or CAP_NET_BIND_SERVICE).
        let room_ip = Ipv4Addr::new(127, 77, 0, 9);
        let listener = UdpSocket::bind((room_ip, 9)).expect("bind 127.77.0.9:9 (run as root)");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let room = RoomConfig {
            name: "101".into(),
            wol_broadcast: room_ip,
            wol_source: Some(Ipv4Addr::LOCALHOST),
        };
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        wake(mac, &room).unwrap();
        let mut buf = [0u8; 200];
        let (n, _) = listener.recv_from(&mut buf).unwrap();
        assert_eq!(n, 102);
        assert!(buf[..6].iter().all(|&b| b == 0xff));
        for i in 0..16 {
            assert_eq!(&buf[6 + i * 6..12 + i * 6], &mac.octets());
        }
        let rooms = [room];
        assert_eq!(super::room(&rooms, Some("101")).unwrap().name, "101");
        assert!(super::room(&rooms, Some("102")).is_none());
        assert!(super::room(&rooms, None).is_none());
    }
}
