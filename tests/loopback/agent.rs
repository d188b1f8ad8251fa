//! The agent API: activation reports into the KMS ledger, and the command long poll,
//! both with the agent token a reset injected.

use crate::support::*;

const MAC: &str = "02:00:00:00:00:41";
const OTHER: &str = "02:00:00:00:00:42";

async fn setup() -> TestServer {
    let extra = format!(
        "[[inventory.stations]]\nmac = \"{MAC}\"\n[[inventory.stations]]\nmac = \"{OTHER}\"\n\
         [kms]\nhost = \"kms.school.example\"\n"
    );
    let server = start(&extra).await;
    install_sample(server.data.path(), "lab", 1);
    server
}

/// Reset `mac` with the KMS profile; its agent token, as station.json carries it.
async fn agent_token(server: &TestServer, mac: &str) -> String {
    let addr = server.daemon.http_addr;
    let (status, body) = post_json(
        addr,
        &format!("/api/v1/stations/{mac}/reset"),
        "",
        r#"{"image": "lab", "profile": "kms"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (_, script) = http_get(addr, &format!("/boot/{mac}.ipxe")).await;
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("netreset.token="))
        .unwrap()
        .to_owned();
    let (status, _, json) = http_request(
        addr,
        &format!("/api/v1/stations/{mac}/station.json"),
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    doc["token"].as_str().unwrap().to_owned()
}

fn report(mac: &str, cmid: &str, count: u32, logged_in: bool) -> String {
    format!(
        r#"{{"station": "{mac}", "family": "windows", "cmid": "{cmid}", "result": "0xC004F038",
            "activated": false, "count": {count}, "logged_in_user": {logged_in}}}"#
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_recorded_once_with_the_right_token_and_a_repeated_cmid_is_flagged() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let token = agent_token(&server, MAC).await;
    let other = agent_token(&server, OTHER).await;
    let cmid = "5a1b2c3d-0000-4000-8000-00000000aaaa";
    let path = "/api/v1/agent/report";

    for (auth, body, want) in [
        (String::new(), report(MAC, cmid, 3, false), 401),
        (bearer(&other), report(MAC, cmid, 3, false), 401),
        (bearer("0.1"), report(MAC, cmid, 3, false), 401),
        (bearer(&token), "{".to_owned(), 400),
        (
            bearer(&token),
            report(MAC, cmid, 3, false).replace("windows", "linux"),
            400,
        ),
        (
            bearer(&token),
            report(MAC, cmid, 3, false).replace("0xC004F038", "oops"),
            400,
        ),
        (bearer(&token), report(MAC, "../x", 3, false), 400),
    ] {
        let (status, answer) = post_json(addr, path, &auth, &body).await;
        assert_eq!(status, want, "{auth:?} {body}: {answer}");
    }
    let store = server.daemon.policy().store();
    assert!(
        store.ledger().unwrap().reports().is_empty(),
        "nothing stored"
    );

    let (status, answer) =
        post_json(addr, path, &bearer(&token), &report(MAC, cmid, 3, false)).await;
    assert_eq!(
        (status, answer["recorded"].as_bool()),
        (201, Some(true)),
        "{answer}"
    );
    let (status, answer) =
        post_json(addr, path, &bearer(&token), &report(MAC, cmid, 3, false)).await;
    assert_eq!(
        (status, answer["recorded"].as_bool()),
        (201, Some(false)),
        "a retried POST"
    );
    let ledger = store.ledger().unwrap();
    assert_eq!(ledger.reports().len(), 1);
    assert_eq!(
        ledger.latest_count(orchestrator::engine::Family::Windows),
        3
    );

    // The next reset brings a new agent token; the old one is refused, and the same
    // CMID again means the image was not generalized.
    let token2 = agent_token(&server, MAC).await;
    let (status, _) = post_json(addr, path, &bearer(&token), &report(MAC, cmid, 3, false)).await;
    assert_eq!(status, 401, "the previous reset's token");
    let (status, answer) =
        post_json(addr, path, &bearer(&token2), &report(MAC, cmid, 3, false)).await;
    assert_eq!(
        (status, answer["duplicate_cmid"].as_bool()),
        (201, Some(true)),
        "{answer}"
    );
    let (_, st) = get_json(addr, &format!("/api/v1/stations/{MAC}")).await;
    let events = st["events"].as_array().unwrap();
    let dup = events
        .iter()
        .find(|e| e["kind"] == "duplicate-cmid")
        .expect("duplicate event");
    assert!(
        dup["detail"]
            .as_str()
            .unwrap()
            .contains("sysprep /generalize"),
        "{dup}"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_command_reaches_the_waiting_poll_once_and_in_use_stations_need_force() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let token = agent_token(&server, MAC).await;
    let poll = format!("/api/v1/agent/commands?station={MAC}&wait=10");
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1"),
        "",
    )
    .await;
    assert_eq!(status, 401, "no token");
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 204, "nothing to do");

    let waiting = {
        let (poll, auth) = (poll.clone(), bearer(&token));
        tokio::spawn(async move { http_request(addr, &poll, &auth).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let cmd_path = format!("/api/v1/stations/{MAC}/command");
    let (status, queued) = post_json(addr, &cmd_path, "", r#"{"command": "reboot"}"#).await;
    assert_eq!(status, 202, "{queued}");
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (got["command"].as_str(), &got["id"]),
        (Some("reboot"), &queued["id"])
    );
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 204, "handed out once");

    // A logged-in user makes the station in-use: no reboot without force.
    let (status, _) = post_json(
        addr,
        "/api/v1/agent/report",
        &bearer(&token),
        &report(MAC, "5a1b2c3d-0000-4000-8000-00000000bbbb", 4, true),
    )
    .await;
    assert_eq!(status, 201);
    let (status, answer) = post_json(addr, &cmd_path, "", r#"{"command": "reboot"}"#).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("in use"),
        "{answer}"
    );
    let (status, _) = post_json(
        addr,
        &cmd_path,
        "",
        r#"{"command": "reboot", "force": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    let (status, answer) = post_json(addr, &cmd_path, "", r#"{"command": "format c:"}"#).await;
    assert_eq!(status, 400, "{answer}");
    server.daemon.shutdown().await.unwrap();
}

async fn put_json(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, answer) = http_send(
        addr,
        "PUT",
        path,
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn station_settings_set_the_image_and_kms_flag_that_the_next_reset_uses() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let path = format!("/api/v1/stations/{MAC}");
    for (body, want) in [
        ("{", 400),
        (r#"{"image": "../x"}"#, 400),
        (r#"{"room": ""}"#, 400),
        (r#"{"colour": "red"}"#, 400),
        (r#"{"kms_activation": "yes"}"#, 400),
    ] {
        let (status, answer) = put_json(addr, &path, body).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = put_json(
        addr,
        "/api/v1/stations/02:00:00:00:09:99",
        r#"{"room": "101"}"#,
    )
    .await;
    assert_eq!(status, 404, "unknown MAC");
    let (_, st) = get_json(addr, &path).await;
    assert_eq!(
        (st["image"].clone(), st["kms_activation"].clone()),
        (serde_json::Value::Null, false.into()),
        "nothing changed"
    );

    // Without an image of its own, a reset must name one.
    let reset = format!("/api/v1/stations/{MAC}/reset");
    let (status, answer) = post_json(addr, &reset, "", "{}").await;
    assert_eq!(status, 400, "{answer}");

    let (status, st) = put_json(
        addr,
        &path,
        r#"{"image": "lab", "kms_activation": true, "room": "101"}"#,
    )
    .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(
        (
            st["image"].as_str(),
            st["kms_activation"].as_bool(),
            st["room"].as_str()
        ),
        (Some("lab"), Some(true), Some("101"))
    );
    let (status, answer) = post_json(addr, &reset, "", "{}").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        (answer["image"].as_str(), answer["profile"].as_str()),
        (Some("lab"), Some("kms"))
    );
    let (status, answer) = post_json(addr, &reset, "", r#"{"profile": "plain"}"#).await;
    assert_eq!(
        (status, answer["profile"].as_str()),
        (202, Some("plain")),
        "a reset may say otherwise"
    );
    server.daemon.shutdown().await.unwrap();
}
