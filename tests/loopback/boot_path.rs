//! DHCP offer -> 4011 -> script, through the real daemon.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, MessageType, Opcode, OptionCode};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn bios_pxe_client_gets_undionly_offer_and_4011_ack_and_is_registered() {
    let server = start("").await;
    let client = PxeClient::new(Ipv4Addr::new(127, 0, 10, 1), [0x52, 0x54, 0, 0, 10, 1]).await;
    let discover = client.packet(
        MessageType::Discover,
        0x1001,
        Some("PXEClient:Arch:00000:UNDI:002001"),
        0,
        &[],
    );
    client.send(&discover, server.dhcp()).await;
    let offer = client.recv(WAIT).await.expect("offer");
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x1001);
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert!(
        offer.yiaddr().is_unspecified(),
        "proxy offers carry no address"
    );
    assert_eq!(offer.siaddr(), Ipv4Addr::LOCALHOST);
    assert_eq!(boot_file(&offer), "undionly.kpxe");
    assert!(
        offer
            .opts()
            .get(OptionCode::ClientMachineIdentifier)
            .is_some(),
        "option 97 echoed"
    );
    assert!(offer.opts().get(OptionCode::SubnetMask).is_none());
    assert!(offer.opts().get(OptionCode::Router).is_none());

    let request = client.packet(
        MessageType::Request,
        0x1002,
        Some("PXEClient:Arch:00000:UNDI:002001"),
        0,
        &[],
    );
    client.send(&request, server.pxe()).await;
    let ack = client.recv(WAIT).await.expect("4011 ack");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.xid(), 0x1002);
    assert_eq!(boot_file(&ack), "undionly.kpxe");

    let (station, kinds) =
        station_with_events(server.daemon.http_addr, "52:54:00:00:0a:01", 2).await;
    assert_eq!(station["mac"], "52:54:00:00:0a:01");
    assert_eq!(station["firmware"], "bios");
    assert_eq!(station["arch"], "x86");
    assert_eq!(kinds, ["dhcp-offer", "pxe-4011"]);
    assert!(station["events"][0]["at"].as_str().unwrap().ends_with('Z'));
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn uefi_client_gets_snponly_and_ipxe_gets_script_url_then_local_disk_script() {
    let server = start("").await;
    let client = PxeClient::new(Ipv4Addr::new(127, 0, 10, 2), [0x52, 0x54, 0, 0, 10, 2]).await;
    client
        .send(
            &client.packet(
                MessageType::Discover,
                1,
                Some("PXEClient:Arch:00007:UNDI:003016"),
                7,
                &[],
            ),
            server.dhcp(),
        )
        .await;
    assert_eq!(boot_file(&client.recv(WAIT).await.unwrap()), "snponly.efi");

    let ipxe = [DhcpOption::UserClass(b"iPXE".to_vec())];
    client
        .send(
            &client.packet(
                MessageType::Discover,
                2,
                Some("PXEClient:Arch:00007:UNDI:003016"),
                7,
                &ipxe,
            ),
            server.dhcp(),
        )
        .await;
    let url = boot_file(&client.recv(WAIT).await.unwrap());
    let base = format!("http://127.0.0.1:{}", server.daemon.http_addr.port());
    assert_eq!(url, format!("{base}/boot/52:54:00:00:0a:02.ipxe"));

    let (status, script) = http_get(server.daemon.http_addr, "/boot/52:54:00:00:0a:02.ipxe").await;
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains("\n:netreset_boot\nexit 0\n"), "{script}");

    let (station, kinds) =
        station_with_events(server.daemon.http_addr, "52-54-00-00-0a-02", 3).await;
    assert_eq!(kinds, ["dhcp-offer", "dhcp-offer", "script"]);
    assert_eq!(station["firmware"], "uefi");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_boot_client_gets_http_client_offer_with_efi_url() {
    let server = start("").await;
    let client = PxeClient::new(Ipv4Addr::new(127, 0, 10, 3), [0x52, 0x54, 0, 0, 10, 3]).await;
    client
        .send(
            &client.packet(
                MessageType::Discover,
                3,
                Some("HTTPClient:Arch:00016:UNDI:003001"),
                16,
                &[],
            ),
            server.dhcp(),
        )
        .await;
    let offer = client.recv(WAIT).await.unwrap();
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    let url = boot_file(&offer);
    let path = url
        .split_once(&format!(":{}", server.daemon.http_addr.port()))
        .unwrap()
        .1;
    assert_eq!(path, "/ipxe/snponly.efi");
    let (status, body) = http_get_bytes(server.daemon.http_addr, path).await;
    assert_eq!(status, 200);
    assert_eq!(body, fake_binary("snponly.efi", 200_001));
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_pxe_and_garbage_packets_get_no_answer_and_do_not_stop_the_server() {
    let server = start("").await;
    let client = PxeClient::new(Ipv4Addr::new(127, 0, 10, 4), [0x52, 0x54, 0, 0, 10, 4]).await;
    // A Windows DHCP client, a plain BOOTP-less packet and garbage, then a PXE client:
    // the only answer must be the PXE client's.
    client
        .send(
            &client.packet(MessageType::Discover, 0xbad1, Some("MSFT 5.0"), 0, &[]),
            server.dhcp(),
        )
        .await;
    client
        .send(
            &client.packet(MessageType::Discover, 0xbad2, None, 0, &[]),
            server.dhcp(),
        )
        .await;
    client.send(&[0xff; 17], server.dhcp()).await;
    let mut truncated = client.packet(MessageType::Discover, 0xbad3, Some("PXEClient"), 0, &[]);
    truncated.truncate(250);
    client.send(&truncated, server.dhcp()).await;
    client
        .send(
            &client.packet(MessageType::Discover, 0x600d, Some("PXEClient"), 0, &[]),
            server.dhcp(),
        )
        .await;
    let reply = client.recv(WAIT).await.expect("the PXE client is answered");
    assert_eq!(reply.xid(), 0x600d);
    assert!(
        client.recv(Duration::from_millis(300)).await.is_none(),
        "nothing else is answered"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_stations_are_ignored_and_not_registered_when_configured() {
    let server = start("[boot]\nunknown = \"ignore\"\n[[inventory.stations]]\nmac = \"52:54:00:00:0a:06\"\nname = \"r1-pc06\"\nroom = \"1\"\n").await;
    let stranger = PxeClient::new(Ipv4Addr::new(127, 0, 10, 5), [0x52, 0x54, 0, 0, 10, 5]).await;
    stranger
        .send(
            &stranger.packet(MessageType::Discover, 5, Some("PXEClient"), 0, &[]),
            server.dhcp(),
        )
        .await;
    let known = PxeClient::new(Ipv4Addr::new(127, 0, 10, 6), [0x52, 0x54, 0, 0, 10, 6]).await;
    known
        .send(
            &known.packet(MessageType::Discover, 6, Some("PXEClient"), 0, &[]),
            server.dhcp(),
        )
        .await;
    assert_eq!(
        known
            .recv(WAIT)
            .await
            .expect("known station answered")
            .xid(),
        6
    );
    assert!(
        stranger.recv(Duration::from_millis(300)).await.is_none(),
        "unknown station ignored"
    );

    // A stranger that reaches the script anyway (the school's DHCP server points at
    // us) is sent to its disk and not registered.
    let (status, script) = http_get(server.daemon.http_addr, "/boot/52:54:00:00:0a:05.ipxe").await;
    assert_eq!(status, 200);
    assert!(script.contains("\nexit 0\n"), "{script}");
    // The known station's offer and script are recorded; events are written in order,
    // so once the script event is there the stranger's request was handled too.
    let (status, _) = http_get(server.daemon.http_addr, "/boot/52:54:00:00:0a:06.ipxe").await;
    assert_eq!(status, 200);
    let (_, kinds) = station_with_events(server.daemon.http_addr, "52:54:00:00:0a:06", 2).await;
    assert_eq!(kinds, ["dhcp-offer", "script"]);
    let (_, list) = get_json(server.daemon.http_addr, "/api/v1/stations").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "r1-pc06");
    assert_eq!(list[0]["room"], "1");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_mac_and_unknown_station_get_clear_http_errors() {
    let server = start("").await;
    let (status, body) = get_json(server.daemon.http_addr, "/api/v1/stations/not-a-mac").await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not a MAC address"));
    let (status, body) = get_json(
        server.daemon.http_addr,
        "/api/v1/stations/52:54:00:99:99:99",
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("52:54:00:99:99:99"));
    let (status, _) = http_get(server.daemon.http_addr, "/boot/../../etc/passwd").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(server.daemon.http_addr, "/boot/52:54:00:00:00:01.sh").await;
    assert_eq!(status, 404);
    let (status, _) = http_get(server.daemon.http_addr, "/ipxe/..%2f..%2fetc%2fpasswd").await;
    assert_eq!(status, 404);
    let (status, health) = get_json(server.daemon.http_addr, "/api/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_script_fetch_neither_registers_a_station_nor_moves_its_address() {
    let server = start("[[inventory.stations]]\nmac = \"52:54:00:00:0a:07\"\n").await;
    let addr = server.daemon.http_addr;
    let station = Ipv4Addr::new(127, 91, 0, 7);
    dhcp_seen(&server, "52:54:00:00:0a:07", station).await;
    let (st, _) = station_with_events(addr, "52:54:00:00:0a:07", 1).await;
    assert_eq!(st["ip"], "127.91.0.7", "DHCP records the address");
    // A student asks for the known station's script and for an unknown one's.
    let student = Ipv4Addr::new(127, 0, 0, 9);
    let (status, _) = http_get_from(addr, student, "/boot/52:54:00:00:0a:07.ipxe").await;
    assert_eq!(status, 200);
    let (status, _) = http_get_from(addr, student, "/boot/52:54:00:00:0a:08.ipxe").await;
    assert_eq!(status, 200);
    // Once the script event of the known station is written, so is anything the
    // unknown one's request wrote (events are written in order).
    let (st, _) = station_with_events(addr, "52:54:00:00:0a:07", 2).await;
    assert_eq!(
        st["ip"], "127.91.0.7",
        "a script fetch does not move it: {st}"
    );
    let (status, _) = get_json(addr, "/api/v1/stations/52:54:00:00:0a:08").await;
    assert_eq!(status, 404, "a script fetch registers nobody");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_stations_past_max_unknown_are_answered_not_stored_and_never_count_for_the_guard() {
    let server = start(
        "[inventory]\nmax_unknown = 40\n\
         [[inventory.stations]]\nmac = \"52:54:00:00:0b:01\"\n\
         [[inventory.stations]]\nmac = \"52:54:00:00:0b:02\"\n\
         [kms]\nhost = \"kms.school.example\"\nfamilies = [\"windows\"]\n",
    )
    .await;
    let addr = server.daemon.http_addr;
    // 60 made-up stations send a DISCOVER each: every one is answered.
    let mut answered = 0;
    for i in 0..60u8 {
        let laptop = PxeClient::new(Ipv4Addr::new(127, 0, 11, 1), [2, 0, 0, 0, 0x0b, i]).await;
        let discover = laptop.packet(
            MessageType::Discover,
            u32::from(i),
            Some("PXEClient"),
            0,
            &[],
        );
        laptop.send(&discover, server.dhcp()).await;
        answered += usize::from(laptop.recv(WAIT).await.is_some());
    }
    assert_eq!(answered, 60, "past the cap they are still answered");
    // Sightings are written in order: once a listed station's offer is recorded, so
    // is everything the 60 wrote. 40 of them are stored, beside the 2 listed.
    let listed = PxeClient::new(Ipv4Addr::new(127, 0, 11, 2), [0x52, 0x54, 0, 0, 0x0b, 1]).await;
    listed
        .send(
            &listed.packet(MessageType::Discover, 99, Some("PXEClient"), 0, &[]),
            server.dhcp(),
        )
        .await;
    assert!(listed.recv(WAIT).await.is_some());
    station_with_events(addr, "52:54:00:00:0b:01", 1).await;
    let (_, list) = get_json(addr, "/api/v1/stations").await;
    assert_eq!(list.as_array().unwrap().len(), 42);
    let (_, list) = get_json(addr, "/api/v1/stations").await;
    let confirmed = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["confirmed"] == true)
        .count();
    assert_eq!(confirmed, 2);
    // 42 registered, but only 2 confirmed: the KMS guard refuses Windows.
    let (status, answer) = post_json(
        addr,
        "/api/v1/campaigns",
        "",
        r#"{"stations": ["52:54:00:00:0b:01", "52:54:00:00:0b:02"], "families": ["windows"], "start": "now", "image": "lab"}"#,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("only 2 stations with windows are confirmed"),
        "{answer}"
    );
    server.daemon.shutdown().await.unwrap();
}

/// `packet` with its giaddr, or its magic cookie, changed.
fn altered(packet: &[u8], giaddr: Option<Ipv4Addr>, cookie: Option<[u8; 4]>) -> Vec<u8> {
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    let mut msg = dhcproto::v4::Message::decode(&mut Decoder::new(packet)).unwrap();
    if let Some(giaddr) = giaddr {
        msg.set_giaddr(giaddr);
    }
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes)).unwrap();
    if let Some(cookie) = cookie {
        bytes[236..240].copy_from_slice(&cookie);
    }
    bytes
}

#[tokio::test]
async fn a_discover_without_the_magic_cookie_gets_no_offer() {
    let server = start("").await;
    let client = PxeClient::new(Ipv4Addr::new(127, 0, 12, 1), [0x52, 0x54, 0, 0, 12, 1]).await;
    let discover = client.packet(MessageType::Discover, 1, Some("PXEClient"), 0, &[]);
    client
        .send(&altered(&discover, None, Some(*b"BOOT")), server.dhcp())
        .await;
    assert!(
        client.recv(Duration::from_millis(500)).await.is_none(),
        "no cookie, no offer"
    );
    client.send(&discover, server.dhcp()).await;
    assert!(
        client.recv(WAIT).await.is_some(),
        "the same packet with its cookie"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_giaddr_is_honoured_only_from_a_configured_relay() {
    let giaddr = Ipv4Addr::new(127, 0, 12, 66);
    let client_ip = Ipv4Addr::new(127, 0, 12, 2);
    // No relays configured: the giaddr of anyone is ignored and the client is
    // answered where it asked from (not at giaddr:67, which a student could name).
    let server = start("").await;
    let client = PxeClient::new(client_ip, [0x52, 0x54, 0, 0, 12, 2]).await;
    let discover = client.packet(MessageType::Discover, 2, Some("PXEClient"), 0, &[]);
    client
        .send(&altered(&discover, Some(giaddr), None), server.dhcp())
        .await;
    assert!(client.recv(WAIT).await.is_some(), "answered locally");
    server.daemon.shutdown().await.unwrap();
    // The sender is a configured relay: the answer goes to the relay (giaddr:67),
    // not back to the sender's port.
    let server = start(&format!("dhcp.relays = [\"{client_ip}\"]\n")).await;
    let client = PxeClient::new(client_ip, [0x52, 0x54, 0, 0, 12, 2]).await;
    client
        .send(&altered(&discover, Some(giaddr), None), server.dhcp())
        .await;
    assert!(
        client.recv(Duration::from_millis(500)).await.is_none(),
        "relayed: answered through the relay"
    );
    server.daemon.shutdown().await.unwrap();
}
