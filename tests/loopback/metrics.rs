//! `GET /metrics`: the protocol servers' and the API's counts, as a scrape shows
//! them after real traffic.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::MessageType;

use crate::support::*;

/// The value of the sample `name{labels}` in a scrape, if it is there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_scrape_counts_dhcp_answers_by_firmware_drops_by_reason_tftp_transfers_and_requests() {
    let server = start("").await;
    let ip = Ipv4Addr::new(127, 0, 12, 5);
    let client = PxeClient::new(ip, [0x52, 0x54, 0, 0, 12, 5]).await;
    // A BIOS PXE DISCOVER (arch 0) on port 67: answered.
    let discover = client.packet(
        MessageType::Discover,
        7,
        Some("PXEClient:Arch:00000:UNDI:002001"),
        0,
        &[],
    );
    client.send(&discover, server.dhcp()).await;
    client.recv(Duration::from_secs(3)).await.expect("an offer");
    // A packet that is no DHCP, and a DISCOVER that is no PXE client's: dropped.
    client.send(b"not dhcp at all", server.dhcp()).await;
    let laptop = client.packet(MessageType::Discover, 8, None, 0, &[]);
    client.send(&laptop, server.dhcp()).await;
    assert!(matches!(
        tftp_get(server.daemon.tftp_addr, ip, b"undionly.kpxe", None).await,
        TftpResult::Data(_)
    ));
    assert!(matches!(
        tftp_get(server.daemon.tftp_addr, ip, b"no-such-file", None).await,
        TftpResult::Error(..)
    ));
    let addr = server.daemon.http_addr;
    let (status, _) = http_get(addr, "/api/v1/stations").await;
    assert_eq!(status, 200);

    let text = eventually(|| async move {
        let (status, text) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200);
        // The drops and the transfer's end are counted on other threads.
        let settled = sample(&text, "netreset_dhcp_dropped_total{reason=\"not-pxe\"}") == Some(1.0)
            && sample(&text, "netreset_tftp_transfers_total{outcome=\"done\"}") == Some(1.0);
        settled.then_some(text)
    })
    .await;
    for (series, want) in [
        ("netreset_dhcp_answers_total{firmware=\"bios\",listener=\"dhcp\"}", 1.0),
        ("netreset_dhcp_answers_total{firmware=\"uefi\",listener=\"dhcp\"}", 0.0),
        ("netreset_dhcp_dropped_total{reason=\"malformed\"}", 1.0),
        ("netreset_dhcp_dropped_total{reason=\"not-pxe\"}", 1.0),
        ("netreset_tftp_transfers_total{outcome=\"done\"}", 1.0),
        ("netreset_tftp_transfers_total{outcome=\"refused\"}", 1.0),
        ("netreset_tftp_sent_bytes_total", 70_000.0),
        (
            "netreset_http_requests_total{route=\"/api/v1/stations\",method=\"GET\",status=\"200\"}",
            1.0,
        ),
        ("netreset_kms_target{family=\"windows\"}", 27.0),
        ("netreset_kms_target{family=\"office\"}", 7.0),
        ("netreset_stations", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    // The text format (no Accept): a counter's family is named with _total.
    assert!(
        text.contains("# TYPE netreset_dhcp_answers_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    server.daemon.shutdown().await.unwrap();
}
