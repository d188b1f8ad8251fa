//! TFTP through the real daemon: downloads are byte-identical, traversal is refused.

use std::net::Ipv4Addr;

use crate::support::*;

#[tokio::test]
async fn tftp_download_is_byte_identical_with_default_and_large_blocks() {
    let server = start("").await;
    let want = fake_binary("snponly.efi", 200_001);
    let from = Ipv4Addr::new(127, 0, 11, 1);
    assert_eq!(
        tftp_get(server.daemon.tftp_addr, from, b"snponly.efi", None).await,
        TftpResult::Data(want.clone())
    );
    assert_eq!(
        tftp_get(server.daemon.tftp_addr, from, b"snponly.efi", Some(1468)).await,
        TftpResult::Data(want.clone())
    );
    // A client asking for more than the MTU allows gets blocks that fit 1500 bytes.
    assert_eq!(
        tftp_get(server.daemon.tftp_addr, from, b"snponly.efi", Some(8192)).await,
        TftpResult::Data(want)
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn tftp_path_traversal_variants_are_refused_and_nothing_outside_the_root_is_read() {
    let server = start("").await;
    // A canary beside the root, with a name an attacker could guess.
    let canary = server.root.path().parent().unwrap().join(format!(
        "{}-secret",
        server.root.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&canary, b"TOP SECRET").unwrap();
    let canary_name = canary.file_name().unwrap().to_string_lossy().into_owned();
    let variants: Vec<Vec<u8>> = vec![
        format!("../{canary_name}").into_bytes(),
        format!("..\\{canary_name}").into_bytes(),
        format!("./../{canary_name}").into_bytes(),
        format!("sub/../../{canary_name}").into_bytes(),
        format!("undionly.kpxe/../../{canary_name}").into_bytes(),
        canary.to_string_lossy().into_owned().into_bytes(),
        canary.to_string_lossy().replace('/', "\\").into_bytes(),
        b"/etc/passwd".to_vec(),
        b"../../../../../../etc/passwd".to_vec(),
        b"..\\..\\..\\..\\etc\\passwd".to_vec(),
        b"//etc/passwd".to_vec(),
        b"..".to_vec(),
        b".".to_vec(),
        b"".to_vec(),
        b"undionly.kpxe\n../../etc/passwd".to_vec(),
        b"\x01../etc/passwd".to_vec(),
        b"%2e%2e/%2e%2e/etc/passwd".to_vec(),
        b"\xff\xfe../etc/passwd".to_vec(),
    ];
    let from = Ipv4Addr::new(127, 0, 11, 2);
    for name in &variants {
        match tftp_get(server.daemon.tftp_addr, from, name, None).await {
            TftpResult::Error(code, _) => assert!(
                code == 1 || code == 2 || code == 0 || code == 4,
                "{name:?}: code {code}"
            ),
            TftpResult::Data(data) => panic!(
                "{:?} was served {} bytes",
                String::from_utf8_lossy(name),
                data.len()
            ),
            TftpResult::NoAnswer => panic!("{:?} got no TFTP error", String::from_utf8_lossy(name)),
        }
    }
    // The server is still serving after all that.
    assert!(matches!(
        tftp_get(server.daemon.tftp_addr, from, b"undionly.kpxe", None).await,
        TftpResult::Data(_)
    ));
    std::fs::remove_file(canary).unwrap();
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn tftp_write_requests_are_refused() {
    let server = start("").await;
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 11, 3), 0))
        .await
        .unwrap();
    socket
        .send_to(b"\0\x02upload.bin\0octet\0", server.daemon.tftp_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        socket.recv_from(&mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&buf[..2], &[0, 5], "an ERROR packet");
    assert!(len >= 4);
    assert!(!server.root.path().join("upload.bin").exists());
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn tftp_read_is_recorded_for_the_station_that_dhcp_saw_at_that_address() {
    use dhcproto::v4::{DhcpOption, MessageType};
    let server = start("").await;
    let ip = Ipv4Addr::new(127, 0, 11, 4);
    let client = PxeClient::new(ip, [0x52, 0x54, 0, 0, 11, 4]).await;
    // The 4011 REQUEST comes from the client's own address (ciaddr).
    let mut request = client.packet(
        MessageType::Request,
        9,
        Some("PXEClient"),
        7,
        &[DhcpOption::RequestedIpAddress(ip)],
    );
    request[12..16].copy_from_slice(&ip.octets());
    client.send(&request, server.pxe()).await;
    client
        .recv(std::time::Duration::from_secs(3))
        .await
        .expect("ack");
    assert!(matches!(
        tftp_get(server.daemon.tftp_addr, ip, b"snponly.efi", None).await,
        TftpResult::Data(_)
    ));
    let addr = server.daemon.http_addr;
    let kinds = eventually(|| async move {
        let (_, st) = get_json(addr, "/api/v1/stations/52:54:00:00:0b:04").await;
        let kinds: Vec<String> = st["events"]
            .as_array()?
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        (kinds.len() == 2).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, ["pxe-4011", "tftp"]);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn tftp_netascii_sends_cr_lf_line_ends_and_unknown_modes_get_an_error() {
    let server = start("").await;
    std::fs::write(
        server.root.path().join("menu.txt"),
        b"line one\nline two\r\n",
    )
    .unwrap();
    let from = Ipv4Addr::new(127, 0, 11, 5);
    assert_eq!(
        tftp_get_mode(server.daemon.tftp_addr, from, b"menu.txt", "netascii", None).await,
        TftpResult::Data(b"line one\r\nline two\r\0\r\n".to_vec())
    );
    match tftp_get_mode(server.daemon.tftp_addr, from, b"menu.txt", "mail", None).await {
        TftpResult::Error(0, message) => assert!(message.contains("mail"), "{message}"),
        other => panic!("mail mode: {other:?}"),
    }
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_address_holding_transfers_gets_four_and_everyone_else_is_still_served() {
    let server = start("").await;
    let tftp = server.daemon.tftp_addr;
    // A laptop asks ten times from ten ports and acknowledges nothing.
    let laptop = Ipv4Addr::new(127, 0, 0, 9);
    let mut answers = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let socket = tokio::net::UdpSocket::bind((laptop, 0)).await.unwrap();
        socket
            .send_to(b"\x00\x01undionly.kpxe\x00octet\x00", tftp)
            .await
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            socket.recv_from(&mut buf),
        )
        .await
        .expect("every request is answered")
        .unwrap();
        answers.push(buf[..n].to_vec());
        sockets.push(socket);
    }
    let data = answers.iter().filter(|a| a[..2] == [0, 3]).count();
    let refused: Vec<String> = answers
        .iter()
        .filter(|a| a[..2] == [0, 5])
        .map(|a| String::from_utf8_lossy(&a[4..a.len() - 1]).into_owned())
        .collect();
    assert_eq!(data, 4, "four transfers for one address");
    assert_eq!(refused.len(), 6);
    assert!(
        refused
            .iter()
            .all(|r| r.contains("too many transfers from this address")),
        "{refused:?}"
    );
    // A station elsewhere on the LAN gets its boot file meanwhile.
    assert_eq!(
        tftp_get(
            tftp,
            Ipv4Addr::new(127, 91, 0, 5),
            b"undionly.kpxe",
            Some(1432)
        )
        .await,
        TftpResult::Data(fake_binary("undionly.kpxe", 70_000))
    );
    server.daemon.shutdown().await.unwrap();
}
