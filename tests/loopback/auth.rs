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
