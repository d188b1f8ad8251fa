//! Admin authentication: every `/api/v1` endpoint but health and the stations' own
//! (agent, restore) needs the admin token; without it, 401 and nothing changes.

use crate::support::*;

#[tokio::test]
async fn admin_endpoints_need_the_admin_token_and_change_nothing_without_it() {
    let server = start("[[inventory.stations]]\nmac = \"02:00:00:00:00:51\"\n").await;
    let addr = server.daemon.http_addr;
    for (auth, want) in [
        (NO_AUTH.to_owned(), 401),
        (
            "Authorization: Bearer wrong-token-0123456789\r\n".to_owned(),
            401,
        ),
        ("Authorization: Basic dXNlcjpwYXNz\r\n".to_owned(), 401),
        (String::new(), 200),
    ] {
        let (status, head, body) = http_request(addr, "/api/v1/stations", &auth).await;
        assert_eq!(status, want, "{auth:?}: {}", String::from_utf8_lossy(&body));
        if want == 401 {
            assert!(head.contains("www-authenticate: bearer"), "{head}");
            assert!(!String::from_utf8_lossy(&body).contains(ADMIN_TOKEN));
        }
    }
    let (status, _, _) = http_request(addr, "/api/v1/health", NO_AUTH).await;
    assert_eq!(status, 200, "health is open");
    let (status, _, _) = http_request(addr, "/boot/02:00:00:00:00:51.ipxe", NO_AUTH).await;
    assert_eq!(status, 200, "boot scripts are open");
    let (status, _, _) = http_send(
        addr,
        "POST",
        "/api/v1/stations/02:00:00:00:00:51/command",
        &format!("{NO_AUTH}Content-Type: application/json\r\n"),
        br#"{"command": "reboot"}"#,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        server
            .daemon
            .policy()
            .store()
            .take_command("02:00:00:00:00:51".parse().unwrap())
            .unwrap()
            .is_none(),
        "nothing was queued"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_past_the_limit_gets_413_and_changes_nothing() {
    let server = start("[[inventory.stations]]\nmac = \"02:00:00:00:00:52\"\n").await;
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(3 << 20));
    let (status, _, body) = http_send(
        server.daemon.http_addr,
        "PUT",
        "/api/v1/stations/02:00:00:00:00:52",
        "Content-Type: application/json\r\n",
        big.as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (_, st) = get_json(
        server.daemon.http_addr,
        "/api/v1/stations/02:00:00:00:00:52",
    )
    .await;
    assert!(st["name"].is_null(), "{st}");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_actions_are_audited_with_target_client_and_status_and_reads_are_not() {
    let mac = "02:00:00:00:00:52";
    let server = start(&format!("[[inventory.stations]]\nmac = \"{mac}\"\n")).await;
    install_sample(server.data.path(), "lab", 1);
    let addr = server.daemon.http_addr;
    let admin = std::net::Ipv4Addr::new(127, 0, 0, 9);
    let json = "Content-Type: application/json\r\n";
    let send = |method: &'static str, path: String, body: &'static str| async move {
        http_send_from(addr, admin, method, &path, json, body.as_bytes())
            .await
            .0
    };
    let station = format!("/api/v1/stations/{mac}");
    assert_eq!(
        send("PUT", station.clone(), r#"{"room": "lab"}"#).await,
        200
    );
    assert_eq!(
        send("POST", format!("{station}/reset"), r#"{"image": "lab"}"#).await,
        202
    );
    assert_eq!(
        send(
            "POST",
            format!("{station}/command"),
            r#"{"command": "format"}"#
        )
        .await,
        400
    );
    assert_eq!(send("DELETE", format!("{station}/reset"), "").await, 200);
    // Reads and calls without the admin token are not admin actions.
    let _ = http_get(addr, &station).await;
    let (status, _, _) = http_send(
        addr,
        "POST",
        &format!("{station}/reset"),
        &format!("{NO_AUTH}{json}"),
        br#"{"image": "lab"}"#,
    )
    .await;
    assert_eq!(status, 401);

    let (status, log) = get_json(addr, "/api/v1/audit").await;
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let got: Vec<(&str, &str, &str, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["client"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("station-settings", mac, "127.0.0.9", 200),
            ("reset", mac, "127.0.0.9", 202),
            ("command", mac, "127.0.0.9", 400),
            ("cancel-reset", mac, "127.0.0.9", 200),
        ]
    );
    assert!(entries[0]["at"].as_str().unwrap().ends_with('Z'), "{log}");
    // Paging: only what came after the last seen.
    let last = entries[2]["seq"].as_u64().unwrap();
    let (_, after) = get_json(addr, &format!("/api/v1/audit?since={last}")).await;
    assert_eq!(after["entries"].as_array().unwrap().len(), 1, "{after}");
    let (status, _) = get_json(addr, "/api/v1/audit?limit=0").await;
    assert_eq!(status, 400);
    let (status, _, _) = http_request(addr, "/api/v1/audit", NO_AUTH).await;
    assert_eq!(status, 401, "the audit log is the admin's");
    server.daemon.shutdown().await.unwrap();
}
