//! Live events (`GET /api/v1/events`): what changes in the store reaches a subscriber
//! as a server-sent event, once, numbered; a reconnect with `Last-Event-ID` gets what
//! it missed.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

const STATION: &str = "02:00:00:00:00:61";

/// A subscriber of the event stream.
struct Subscriber {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Subscriber {
    async fn connect(addr: SocketAddr, last_event_id: Option<u64>) -> Subscriber {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let last = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n{last}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        let status = lines.next_line().await.unwrap().unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut head = Vec::new();
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(
            head.iter().any(|h| h == "content-type: text/event-stream"),
            "{head:?}"
        );
        Subscriber { lines }
    }

    /// The next event (chunk sizes and keep-alive comments skipped), within 5 s.
    async fn next(&mut self) -> Sse {
        tokio::time::timeout(Duration::from_secs(5), async {
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            loop {
                let line = self.lines.next_line().await.unwrap().expect("stream open");
                if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                    id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:"))
                {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                    data.push_str(v);
                } else if line.is_empty() && !event.is_empty() {
                    return Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    };
                }
            }
        })
        .await
        .expect("an event within 5 s")
    }

    /// The next event of kind `event`, skipping others.
    async fn next_of(&mut self, event: &str) -> Sse {
        loop {
            let e = self.next().await;
            if e.event == event {
                return e;
            }
        }
    }
}

/// Rename the test's station through the API.
async fn rename(addr: SocketAddr, name: &str) {
    let body = format!("{{\"name\": \"{name}\"}}");
    let (status, _, answer) = http_send(
        addr,
        "PUT",
        &format!("/api/v1/stations/{STATION}"),
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn a_subscriber_sees_station_and_boot_events_and_a_reconnect_gets_what_it_missed() {
    let server = start(&format!("[[inventory.stations]]\nmac = \"{STATION}\"\n")).await;
    let addr = server.daemon.http_addr;
    let mut sub = Subscriber::connect(addr, None).await;

    let (status, _, body) = http_send(
        addr,
        "PUT",
        &format!("/api/v1/stations/{STATION}"),
        "Content-Type: application/json\r\n",
        br#"{"name": "pc-01", "room": "lab-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let renamed = sub.next_of("station").await;
    assert_eq!(renamed.data["mac"], STATION);
    assert_eq!(renamed.data["name"], "pc-01");
    assert_eq!(renamed.data["state"], "idle");
    let first = renamed.id.expect("events carry ids");

    let store = server.daemon.policy().store();
    let mac = STATION.parse().unwrap();
    store.record(mac, "dhcp", "offered undionly.kpxe").unwrap();
    let boot = sub.next_of("boot").await;
    assert_eq!(
        (&boot.data["mac"], &boot.data["kind"], &boot.data["detail"]),
        (
            &Value::from(STATION),
            &Value::from("dhcp"),
            &Value::from("offered undionly.kpxe")
        )
    );
    assert!(boot.id.unwrap() > first, "ids rise");

    // A sighting that changes nothing the station shows but its timestamps is no event;
    // the next station event is the next real change.
    store.configure(mac, &Default::default()).unwrap();
    rename(addr, "pc-02").await;
    let next = sub.next_of("station").await;
    assert_eq!(next.data["name"], "pc-02", "{next:?}");

    // Reconnecting after the first event replays the boot event and the rename.
    let mut again = Subscriber::connect(addr, Some(first)).await;
    let replayed = again.next().await;
    assert_eq!((replayed.event.as_str(), replayed.id), ("boot", boot.id));
    let replayed = again.next_of("station").await;
    assert_eq!(replayed.data["name"], "pc-02");

    // And without the admin token there is no stream.
    let (status, _, _) = http_send(addr, "GET", "/api/v1/events", NO_AUTH, b"").await;
    assert_eq!(status, 401);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_station_list_is_made_anew_after_every_change_and_answers_304_while_nothing_changed() {
    let server = start(&format!("[[inventory.stations]]\nmac = \"{STATION}\"\n")).await;
    let addr = server.daemon.http_addr;
    let etag_of = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .expect("an etag")
            .trim()
            .to_owned()
    };
    let (status, head, body) = http_send(addr, "GET", "/api/v1/stations", "", b"").await;
    assert_eq!(status, 200);
    let first = etag_of(&head);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["name"], Value::Null);
    let same = format!("If-None-Match: {first}\r\n");
    let (status, _, body) = http_send(addr, "GET", "/api/v1/stations", &same, b"").await;
    assert_eq!((status, body.len()), (304, 0), "nothing changed");

    rename(addr, "pc-07").await;
    let (status, head, body) = http_send(addr, "GET", "/api/v1/stations", &same, b"").await;
    assert_eq!(status, 200, "the old ETag no longer matches");
    assert_ne!(etag_of(&head), first);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["name"], "pc-07", "the cached list was made anew");
    // A change made below the API (a DHCP sighting, the runner) counts too.
    let mac = STATION.parse().unwrap();
    server
        .daemon
        .policy()
        .store()
        .configure(
            mac,
            &orchestrator::store::Settings {
                room: Some("lab-9".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let (_, body) = http_get(addr, "/api/v1/stations").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["room"], "lab-9");
    server.daemon.shutdown().await.unwrap();
}
