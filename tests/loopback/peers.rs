//! Restore waves over loopback: stations of one room reset to the same image at once
//! form a wave; their restore clients (in-process, the code of `netreset-restore`)
//! serve each other chunks on 127.0.0.1, and the server sends each chunk about once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use images::client::{run, Options, Outcome};

use crate::support::*;

const STATIONS: [&str; 3] = [
    "02:00:00:00:00:51",
    "02:00:00:00:00:52",
    "02:00:00:00:00:53",
];

fn inventory(room_peers: Option<bool>) -> String {
    let mut text = String::new();
    if let Some(on) = room_peers {
        text.push_str(&format!(
            "[[rooms]]\nname = \"101\"\nwol_broadcast = \"127.255.255.255\"\npeers = {on}\n"
        ));
    }
    for mac in STATIONS {
        text.push_str(&format!(
            "[[inventory.stations]]\nmac = \"{mac}\"\nroom = \"101\"\n"
        ));
    }
    if room_peers.is_none() {
        text = text.replace("room = \"101\"\n", "");
    }
    text
}

async fn reset_all(server: &TestServer) {
    for mac in STATIONS {
        let (status, body) = post_json(
            server.daemon.http_addr,
            &format!("/api/v1/stations/{mac}/reset"),
            "",
            r#"{"image": "lab", "profile": "plain"}"#,
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
}

/// The restore client's options, serving its wave on 127.0.0.1 when the boot script
/// says it is in one.
fn options(args: &HashMap<String, String>, disk: &Path, mbit: Option<f64>) -> Options {
    Options {
        max_mbit: mbit,
        peer_listen: args
            .contains_key("peer_port")
            .then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        ..crate::restore::options(args, disk)
    }
}

fn restore(opts: Options) -> tokio::task::JoinHandle<Result<Outcome, images::Error>> {
    tokio::task::spawn_blocking(move || run(&opts, &|_| {}))
}

async fn reset_of(server: &TestServer, mac: &str) -> serde_json::Value {
    let (status, body) =
        get_json(server.daemon.http_addr, &format!("/api/v1/stations/{mac}")).await;
    assert_eq!(status, 200, "{body}");
    body["reset"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stations_reset_together_restore_from_each_other_and_every_disk_is_the_image() {
    let server = start(&inventory(None)).await;
    install_sample(server.data.path(), "lab", 7);
    let image = std::fs::read(server.data.path().join("lab.raw")).unwrap();
    reset_all(&server).await;
    let waves: Vec<serde_json::Value> = futures_waves(&server).await;
    assert!(waves[0].is_u64(), "a wave: {waves:?}");
    assert!(waves.iter().all(|w| *w == waves[0]), "one wave: {waves:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (i, mac) in STATIONS.iter().enumerate() {
        let (_, args) = boot_script(&server, mac).await;
        assert_eq!(
            args.get("peer_port").map(String::as_str),
            Some("7410"),
            "{args:?}"
        );
        let disk = dir.path().join(format!("disk-{i}"));
        std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
        // The first restore is held to 20 Mbit/s (2 s), so the others join while it
        // runs.
        let mbit = (i == 0).then_some(20.0);
        runs.push((disk.clone(), restore(options(&args, &disk, mbit))));
        if i == 0 {
            eventually(|| async {
                let r = reset_of(&server, mac).await;
                (r["state"] == "restoring").then_some(())
            })
            .await;
        }
    }
    let mut outcomes = Vec::new();
    let mut chunks = 0;
    for (disk, run) in runs {
        let outcome = run.await.unwrap().expect("the restore succeeds");
        assert!(
            std::fs::read(&disk).unwrap() == image,
            "{} differs from the image",
            disk.display()
        );
        chunks = outcome.stats.chunks_fetched;
        outcomes.push(outcome.peers.expect("restored in a wave"));
    }
    let from_server: u64 = outcomes.iter().map(|p| p.chunks_from_server).sum();
    let from_peers: u64 = outcomes.iter().map(|p| p.chunks_from_peers).sum();
    let served: u64 = outcomes.iter().map(|p| p.chunks_served).sum();
    assert!(
        outcomes[0].chunks_served > 0,
        "the first station served the others: {outcomes:?}"
    );
    assert!(outcomes[1].chunks_from_peers > 0, "{outcomes:?}");
    assert_eq!(from_peers, served, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|p| p.peers_dropped == 0),
        "{outcomes:?}"
    );
    // Unicast, the server would send every chunk three times.
    assert!(
        from_server < chunks * 2,
        "the server sent less than two restores' worth for three: {outcomes:?}"
    );
    let done = reset_of(&server, STATIONS[1]).await;
    assert_eq!(done["state"], "done");
    assert!(
        done["stats"]["chunks_from_peers"].as_u64().unwrap() > 0,
        "{done}"
    );
    let (_, metrics) = http_get(server.daemon.http_addr, "/metrics").await;
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("netreset_restore_peer_chunks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peer chunks in the metrics:\n{metrics}"));
    assert_eq!(
        counted, from_peers,
        "the metric counts the chunks from peers"
    );
}

/// The wave of each station's reset, as its view shows it.
async fn futures_waves(server: &TestServer) -> Vec<serde_json::Value> {
    let mut waves = Vec::new();
    for mac in STATIONS {
        waves.push(reset_of(server, mac).await["wave"].clone());
    }
    waves
}

#[tokio::test]
async fn a_room_with_peers_off_restores_from_the_server_alone() {
    let server = start(&inventory(Some(false))).await;
    install_sample(server.data.path(), "lab", 7);
    reset_all(&server).await;
    assert!(futures_waves(&server).await.iter().all(|w| w.is_null()));
    let (_, args) = boot_script(&server, STATIONS[0]).await;
    assert!(!args.contains_key("peer_port"), "{args:?}");
    // Asked anyway, the server names no wave.
    let (status, body) = post_json(
        server.daemon.http_addr,
        &format!("/api/v1/stations/{}/peers", STATIONS[0]),
        &format!("Authorization: Bearer {}\r\n", args["token"]),
        r#"{"port": 7410}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["wave"].is_null(), "{body}");
}

#[tokio::test]
async fn the_wave_is_told_only_to_its_members_with_their_restore_tokens() {
    let server = start(&inventory(None)).await;
    install_sample(server.data.path(), "lab", 7);
    reset_all(&server).await;
    let path = format!("/api/v1/stations/{}/peers", STATIONS[0]);
    for auth in ["", "Authorization: Bearer 1.abc\r\n"] {
        let (status, body) =
            post_json(server.daemon.http_addr, &path, auth, r#"{"port": 7410}"#).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    let (_, args) = boot_script(&server, STATIONS[0]).await;
    let auth = format!("Authorization: Bearer {}\r\n", args["token"]);
    for bad in [
        r#"{"port": 0}"#,
        r#"{"port": 70000}"#,
        r#"{"port": 1, "x": 2}"#,
        "{",
    ] {
        let (status, body) = post_json(server.daemon.http_addr, &path, &auth, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) =
        post_json(server.daemon.http_addr, &path, &auth, r#"{"port": 7410}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["wave"].is_u64(), "{body}");
    assert_eq!(body["token"].as_str().unwrap().len(), 64, "{body}");
    assert_eq!(
        body["peers"],
        serde_json::json!([]),
        "no other member restores yet: {body}"
    );
    // Another station's token does not open this station's wave.
    let (_, other) = boot_script(&server, STATIONS[1]).await;
    let (status, _) = post_json(
        server.daemon.http_addr,
        &path,
        &format!("Authorization: Bearer {}\r\n", other["token"]),
        r#"{"port": 7410}"#,
    )
    .await;
    assert_eq!(status, 401);
}
