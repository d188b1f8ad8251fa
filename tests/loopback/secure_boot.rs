//! The Secure Boot path through the real daemon: a station set for it gets shim by
//! ProxyDHCP, shim and GRUB over TFTP, GRUB's bootstrap configuration, then its own,
//! which chains the restore environment over TFTP with a restore token only when
//! asked from the station's own address.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::MessageType;

use crate::support::*;

const SIGNED: &str = "02:00:00:00:5b:01";
const PLAIN: &str = "02:00:00:00:5b:02";

/// The ProxyDHCP boot file an x86-64 UEFI PXE ROM of `mac` is offered.
async fn uefi_boot_file(server: &TestServer, mac: &str, ip: Ipv4Addr) -> String {
    let mac: pxe::MacAddr = mac.parse().unwrap();
    let client = PxeClient::new(ip, mac.octets()).await;
    let discover = client.packet(
        MessageType::Discover,
        0x5b00,
        Some("PXEClient:Arch:00007:UNDI:003016"),
        7,
        &[],
    );
    client.send(&discover, server.dhcp()).await;
    let offer = client.recv(Duration::from_secs(3)).await.expect("an offer");
    boot_file(&offer)
}

fn data(result: TftpResult, what: &str) -> Vec<u8> {
    match result {
        TftpResult::Data(d) => d,
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secure_boot_station_gets_shim_grub_and_its_own_grub_config_with_the_token_only_from_its_address(
) {
    let loaders = tempfile::tempdir().unwrap();
    let (shim, grub) = (loaders.path().join("shim"), loaders.path().join("grub"));
    std::fs::write(&shim, fake_binary("shimx64.efi", 950_000)).unwrap();
    std::fs::write(&grub, fake_binary("grubnetx64.efi", 1_700_000)).unwrap();
    let server = start(&format!(
        "[boot]\nshim = \"{}\"\ngrub = \"{}\"\n\
         [[inventory.stations]]\nmac = \"{SIGNED}\"\nsecure_boot = true\n\
         [[inventory.stations]]\nmac = \"{PLAIN}\"\n",
        shim.display(),
        grub.display()
    ))
    .await;
    install_sample(server.data.path(), "lab", 5);
    let (addr, tftp) = (server.daemon.http_addr, server.daemon.tftp_addr);
    let station_ip = Ipv4Addr::new(127, 0, 91, 1);
    let student = Ipv4Addr::new(127, 0, 91, 66);

    // ProxyDHCP: shim for the Secure Boot station, iPXE for the other.
    assert_eq!(
        uefi_boot_file(&server, SIGNED, station_ip).await,
        "netreset/signed/shimx64.efi"
    );
    assert_eq!(
        uefi_boot_file(&server, PLAIN, Ipv4Addr::new(127, 0, 91, 2)).await,
        "snponly.efi"
    );

    // Shim, then the GRUB shim loads from shim's own directory, as configured.
    let got = tftp_get(tftp, station_ip, b"netreset/signed/shimx64.efi", Some(1468)).await;
    assert_eq!(data(got, "shim"), std::fs::read(&shim).unwrap());
    let got = tftp_get(tftp, station_ip, b"netreset/signed/grubx64.efi", None).await;
    assert_eq!(data(got, "grub"), std::fs::read(&grub).unwrap());
    // GRUB's first configuration, asked as GRUB asks (absolute, under its prefix).
    let got = tftp_get(tftp, station_ip, b"/grub/grub.cfg", None).await;
    assert_eq!(data(got, "grub.cfg"), pxe::grub::BOOTSTRAP.as_bytes());
    let got = tftp_get(tftp, station_ip, b"/grub/x86_64-efi/command.lst", None).await;
    assert_eq!(data(got, "command.lst"), b"", "module lists are empty");

    // No reset: the station's configuration exits to the firmware (its disk).
    let cfg = format!("/netreset/grub/{SIGNED}.cfg");
    let text = String::from_utf8(data(
        tftp_get(tftp, station_ip, cfg.as_bytes(), None).await,
        "station cfg",
    ))
    .unwrap();
    assert!(text.contains("-> local disk\nexit\n"), "{text}");

    // A reset: from the station's address the restore environment with a token...
    let (status, body) = post_json(
        addr,
        &format!("/api/v1/stations/{SIGNED}/reset"),
        "",
        r#"{"image": "lab", "profile": "plain"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // EDK2's DHCP REQUEST names the address it took; the boot server notes it.
    dhcp_seen(&server, SIGNED, station_ip).await;
    let text = String::from_utf8(data(
        tftp_get(tftp, station_ip, cfg.as_bytes(), None).await,
        "station cfg",
    ))
    .unwrap();
    assert!(
        text.contains("if linux '/netreset/restore/vmlinuz' 'quiet' 'panic=10'"),
        "{text}"
    );
    assert!(text.contains("'netreset.token="), "{text}");
    assert!(
        text.contains(&format!("'netreset.station={SIGNED}'")),
        "{text}"
    );
    assert!(
        !text.contains("initrd=initrd.img"),
        "no iPXE initrd= for GRUB: {text}"
    );
    assert!(
        text.contains("if initrd '/netreset/restore/initrd.img'; then"),
        "{text}"
    );
    // ...which GRUB loads over TFTP.
    let got = tftp_get(tftp, station_ip, b"/netreset/restore/vmlinuz", None).await;
    assert_eq!(data(got, "kernel"), b"kernel stand-in");
    let got = tftp_get(tftp, station_ip, b"/netreset/restore/initrd.img", None).await;
    assert_eq!(data(got, "initrd"), b"initrd stand-in");

    // ...and from a student's laptop asking for the same file: no token.
    let text = String::from_utf8(data(
        tftp_get(tftp, student, cfg.as_bytes(), None).await,
        "station cfg from elsewhere",
    ))
    .unwrap();
    assert!(!text.contains("token"), "{text}");
    assert!(text.contains("exit"), "{text}");

    // A name under the station directory that is no MAC is refused, clearly.
    match tftp_get(tftp, station_ip, b"netreset/grub/../../etc/passwd", None).await {
        TftpResult::Error(_, _) => {}
        other => panic!("{other:?}"),
    }
    match tftp_get(tftp, station_ip, b"netreset/grub/not-a-mac.cfg", None).await {
        TftpResult::Error(2, why) => assert!(why.contains("MAC"), "{why}"),
        other => panic!("{other:?}"),
    }

    // The station's page: the signed loader, the GRUB configurations it was served.
    let (st, kinds) = station_with_events(addr, SIGNED, 4).await;
    assert_eq!(st["boot_loader"], "signed");
    assert_eq!(st["secure_boot"], true);
    let served: Vec<&serde_json::Value> = st["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "grub-config")
        .collect();
    assert!(
        served.iter().any(|e| e["detail"]
            .as_str()
            .unwrap()
            .starts_with("chain /netreset/restore/vmlinuz")),
        "{kinds:?}"
    );
    let (_, plain) = get_json(addr, &format!("/api/v1/stations/{PLAIN}")).await;
    assert_eq!(plain["boot_loader"], "ipxe");

    // The admin turns it off: iPXE again at the next boot.
    let (status, body) = put_json(
        addr,
        &format!("/api/v1/stations/{SIGNED}"),
        r#"{"secure_boot": false}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        uefi_boot_file(&server, SIGNED, station_ip).await,
        "snponly.efi"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_set_for_secure_boot_gives_its_stations_shim_unless_a_station_says_otherwise() {
    let server = start(
        "[[rooms]]\nname = \"101\"\nwol_broadcast = \"127.0.0.255\"\nsecure_boot = true\n\
         [[inventory.stations]]\nmac = \"02:00:00:00:5c:01\"\nroom = \"101\"\n\
         [[inventory.stations]]\nmac = \"02:00:00:00:5c:02\"\nroom = \"101\"\nsecure_boot = false\n\
         [[inventory.stations]]\nmac = \"02:00:00:00:5c:03\"\nroom = \"102\"\n",
    )
    .await;
    for (mac, last, want) in [
        ("02:00:00:00:5c:01", 1, "netreset/signed/shimx64.efi"),
        ("02:00:00:00:5c:02", 2, "snponly.efi"),
        ("02:00:00:00:5c:03", 3, "snponly.efi"),
    ] {
        let got = uefi_boot_file(&server, mac, Ipv4Addr::new(127, 0, 92, last)).await;
        assert_eq!(got, want, "{mac}");
    }
    server.daemon.shutdown().await.unwrap();
}
