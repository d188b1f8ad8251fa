//! The agent API: activation reports into the KMS ledger, and the command long poll,
//! both with the agent token a reset injected.

use orchestrator::sim::school;

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
    dhcp_seen(server, mac, std::net::Ipv4Addr::LOCALHOST).await;
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

/// An agent report of `mac`: the KMS client licences of both families, `events`,
/// the session, and the families given up.
fn report_of(mac: &str, events: &[String], user: bool, gave_up: &[&str]) -> String {
    serde_json::json!({
        "station": mac,
        "interactive_user": user,
        "licenses": school::licenses(&["windows", "office"], "Volume:GVLK"),
        "events": events,
        "gave_up": gave_up,
    })
    .to_string()
}

/// One answered Windows request of `cmid` at `at_ms` (records `record`, `record+1`).
fn windows(record: u64, at_ms: u64, cmid: &str, count: u32) -> Vec<String> {
    school::kms_events(record, at_ms, "windows", cmid, count, count >= 25)
}

fn report(mac: &str, cmid: &str, count: u32, logged_in: bool) -> String {
    report_of(mac, &windows(100, NOW_MS, cmid, count), logged_in, &[])
}

/// 2026-11-30T22:10:00Z, when the tests' stations asked the KMS host.
const NOW_MS: u64 = 1_796_076_600_000;

/// POST an agent report with `token`.
async fn send(server: &TestServer, token: &str, body: &str) -> (u16, serde_json::Value) {
    post_json(
        server.daemon.http_addr,
        &report_path(MAC),
        &bearer(token),
        body,
    )
    .await
}

/// Where an agent posts its reports.
fn report_path(station: &str) -> String {
    format!("/api/v1/agent/report?station={station}")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_tokens_are_checked_before_the_body_is_read() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let token = agent_token(&server, MAC).await;
    let result = format!("/api/v1/agent/command-result?station={MAC}");
    let garbage = "{".repeat(100_000);
    for (path, auth, want) in [
        // No token, or another station's: 401, whatever the body is.
        (report_path(MAC), String::new(), 401),
        (report_path(OTHER), bearer(&token), 401),
        (result.clone(), bearer("0.1"), 401),
        // The token alone does not say whose it is.
        ("/api/v1/agent/report".to_owned(), bearer(&token), 400),
        // The right token: now the body is read, and it is not JSON.
        (report_path(MAC), bearer(&token), 400),
    ] {
        let (status, answer) = post_json(addr, &path, &auth, &garbage).await;
        assert_eq!(status, want, "{path} {auth:?}: {answer}");
        if want == 401 {
            assert!(
                !answer.to_string().contains("request body"),
                "refused for its token, not its body: {answer}"
            );
        }
    }
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_recorded_once_with_the_right_token_and_a_repeated_cmid_is_flagged() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let token = agent_token(&server, MAC).await;
    let other = agent_token(&server, OTHER).await;
    let cmid = "5a1b2c3d-0000-4000-8000-00000000aaaa";
    let path = &report_path(MAC);

    for (auth, body, want) in [
        (String::new(), report(MAC, cmid, 3, false), 401),
        (bearer(&other), report(MAC, cmid, 3, false), 401),
        (bearer("0.1"), report(MAC, cmid, 3, false), 401),
        (bearer(&token), "{".to_owned(), 400),
        (bearer(&token), report_of(MAC, &[], false, &["linux"]), 400),
        (
            bearer(&token),
            r#"{"station": "02:00:00:00:00:41", "extra": 1}"#.to_owned(),
            400,
        ),
        // The body must be about the station of the request.
        (bearer(&token), report(OTHER, cmid, 3, false), 400),
    ] {
        let (status, answer) = post_json(addr, path, &auth, &body).await;
        assert_eq!(status, want, "{auth:?} {body}: {answer}");
    }
    // Events that cannot be read are left out, each named; the report's others
    // still count (here there are none).
    for events in [
        report(MAC, cmid, 3, false).replace("12289", "12290"),
        report(MAC, cmid, 3, false).replace("Microsoft-Windows-Security-SPP", "Evil"),
        report(MAC, "../x", 3, false),
        report_of(MAC, &["<Event".to_owned()], false, &[]),
        report_of(
            MAC,
            &[format!(
                "<!DOCTYPE x [<!ENTITY a 'b'>]>{}",
                windows(1, NOW_MS, cmid, 3)[0]
            )],
            false,
            &[],
        ),
    ] {
        let (status, answer) = send(&server, &token, &events).await;
        assert_eq!(
            (status, answer["recorded"].as_u64()),
            (201, Some(0)),
            "{events}: {answer}"
        );
        let unreadable = answer["unreadable"].as_array().unwrap();
        assert!(!unreadable.is_empty(), "{answer}");
        assert!(
            unreadable[0]["error"].as_str().unwrap().len() > 10,
            "{answer}"
        );
    }
    let store = server.daemon.policy().store();
    assert!(
        store.ledger().unwrap().reports().is_empty(),
        "nothing stored"
    );

    let (status, answer) = send(&server, &token, &report(MAC, cmid, 3, false)).await;
    assert_eq!(
        (status, answer["recorded"].as_u64()),
        (201, Some(1)),
        "{answer}"
    );
    let (status, answer) = send(&server, &token, &report(MAC, cmid, 3, false)).await;
    assert_eq!(
        (
            status,
            answer["recorded"].as_u64(),
            answer["renewed"].as_u64()
        ),
        (201, Some(0), Some(0)),
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
    let (status, _) = send(&server, &token, &report(MAC, cmid, 3, false)).await;
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
async fn a_renewal_reaches_the_ledger_as_the_cmids_last_request() {
    let server = setup().await;
    let token = agent_token(&server, MAC).await;
    let cmid = "5a1b2c3d-0000-4000-8000-00000000cccc";
    let week = 7 * 86_400_000;
    let mut events = windows(100, NOW_MS - week, cmid, 26);
    let (status, answer) = send(&server, &token, &report_of(MAC, &events, false, &[])).await;
    assert_eq!(
        (status, answer["recorded"].as_u64()),
        (201, Some(1)),
        "{answer}"
    );
    // A week later Windows renews: the agent posts the whole log again.
    events.extend(windows(102, NOW_MS, cmid, 27));
    let (status, answer) = send(&server, &token, &report_of(MAC, &events, false, &[])).await;
    assert_eq!(
        (
            status,
            answer["recorded"].as_u64(),
            answer["renewed"].as_u64()
        ),
        (201, Some(0), Some(1)),
        "{answer}"
    );
    let ledger = server.daemon.policy().store().ledger().unwrap();
    assert_eq!(ledger.reports().len(), 1, "one CMID, one entry");
    let entry = &ledger.reports()[0];
    assert_eq!(
        (entry.at, entry.last_request(), entry.count, entry.activated),
        ((NOW_MS - week) / 1000, NOW_MS / 1000, 27, true)
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_counts_and_families_not_asked_for_are_refused_and_stored_nowhere() {
    let extra = format!(
        "[[inventory.stations]]\nmac = \"{MAC}\"\n[kms]\nhost = \"kms.school.example\"\nfamilies = [\"windows\"]\n"
    );
    let server = start(&extra).await;
    install_sample(server.data.path(), "lab", 1);
    let token = agent_token(&server, MAC).await;
    let cmid = "5a1b2c3d-0000-4000-8000-00000000dddd";
    let office = school::kms_events(300, NOW_MS, "office", cmid, 7, true);
    for (body, says) in [
        (report(MAC, cmid, 51, false), "50 at most"),
        (report_of(MAC, &[], false, &["office"]), "not asked"),
        (
            report_of(
                MAC,
                &school::kms_events(300, NOW_MS, "office", cmid, 11, true),
                false,
                &[],
            ),
            "10 at most",
        ),
    ] {
        let (status, answer) = send(&server, &token, &body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    // Three CMIDs of one family in one deployment are made up.
    let made_up: Vec<String> = (0..3u64)
        .flat_map(|i| {
            windows(
                500 + 2 * i,
                NOW_MS,
                &format!("5a1b2c3d-0000-4000-8000-0000000000e{i}"),
                3,
            )
        })
        .collect();
    let (status, answer) = send(&server, &token, &report_of(MAC, &made_up, false, &[])).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("3 windows CMIDs"),
        "{answer}"
    );
    // Office events of a station asked for Windows only: taken for nothing.
    let (status, answer) = send(&server, &token, &report_of(MAC, &office, false, &[])).await;
    assert_eq!(
        (status, answer["recorded"].as_u64()),
        (201, Some(0)),
        "{answer}"
    );
    assert_eq!(answer["ignored"], serde_json::json!(["office"]), "{answer}");
    assert!(server
        .daemon
        .policy()
        .store()
        .ledger()
        .unwrap()
        .reports()
        .is_empty());
    let (status, answer) = send(&server, &token, &report(MAC, cmid, 50, false)).await;
    assert_eq!(
        (status, answer["recorded"].as_u64()),
        (201, Some(1)),
        "50 is a count a host can report: {answer}"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_command_reaches_the_waiting_poll_once_and_in_use_stations_need_force() {
    let server = setup().await;
    let addr = server.daemon.http_addr;
    let token = agent_token(&server, MAC).await;
    let poll = format!("/api/v1/agent/commands?station={MAC}&wait=10&interactive_user=0");
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1"),
        "",
    )
    .await;
    assert_eq!(status, 401, "no token");
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1&interactive_user=2"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 400, "interactive_user is 0 or 1");
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
        (got["command"].as_str(), &got["id"], got["force"].as_bool()),
        (Some("reboot"), &queued["id"], Some(false))
    );
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 204, "handed out once");

    // A user logs on after the last report: the next poll says so, and the station
    // is in use: no reboot without force.
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=0&interactive_user=1"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 204);
    let (status, answer) = post_json(addr, &cmd_path, "", r#"{"command": "reboot"}"#).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("in use"),
        "{answer}"
    );
    let (status, forced) = post_json(
        addr,
        &cmd_path,
        "",
        r#"{"command": "reboot", "force": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, body) = http_request(
        addr,
        &format!("/api/v1/agent/commands?station={MAC}&wait=1&interactive_user=1"),
        &bearer(&token),
    )
    .await;
    assert_eq!(status, 200);
    let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (got["id"].clone(), got["force"].as_bool()),
        (forced["id"].clone(), Some(true)),
        "the forced command reaches the agent with force"
    );
    // The agent says what it did.
    let result = &format!("/api/v1/agent/command-result?station={MAC}");
    for (body, want) in [
        (
            format!(
                r#"{{"station": "{MAC}", "id": {}, "outcome": "warned"}}"#,
                got["id"]
            ),
            200,
        ),
        (
            format!(
                r#"{{"station": "{MAC}", "id": {}, "outcome": "exploded"}}"#,
                got["id"]
            ),
            400,
        ),
        (
            format!(r#"{{"station": "{MAC}", "id": "../x", "outcome": "run"}}"#),
            400,
        ),
    ] {
        let (status, answer) = post_json(addr, result, &bearer(&token), &body).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = post_json(
        addr,
        result,
        "",
        &format!(r#"{{"station": "{MAC}", "id": "00", "outcome": "run"}}"#),
    )
    .await;
    assert_eq!(status, 401);
    let (_, st) = get_json(addr, &format!("/api/v1/stations/{MAC}")).await;
    assert!(
        st["events"].as_array().unwrap().iter().any(|e| e["kind"] == "command-run"
            && e["detail"].as_str().unwrap().contains("warned")),
        "{st}"
    );
    let (status, answer) = post_json(addr, &cmd_path, "", r#"{"command": "format c:"}"#).await;
    assert_eq!(status, 400, "{answer}");
    server.daemon.shutdown().await.unwrap();
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
