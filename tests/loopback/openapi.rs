//! The OpenAPI document against the router it describes: every operation in it is
//! routed, no other method is, every admin operation refuses a request without the
//! admin token, and every error answer has the documented shape.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const STATION: &str = "02:00:00:00:00:51";

/// The status of `method path` and, unless it is a stream, its body: reads the head,
/// then the body only when the answer has a length (an event stream has none).
async fn probe(addr: SocketAddr, method: &str, path: &str, auth: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{length}{auth}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "{method} {path}: the connection closed before a response head"
        );
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if head.contains("content-type: text/event-stream") {
        return (status, String::new());
    }
    stream.read_to_end(&mut raw).await.unwrap();
    (
        status,
        String::from_utf8_lossy(&raw[head_end + 4..]).into_owned(),
    )
}

fn concrete(template: &str) -> String {
    template.replace("{mac}", STATION).replace("{id}", "1")
}

fn admin() -> String {
    format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")
}

async fn document(addr: SocketAddr) -> Value {
    let (status, body) = probe(addr, "GET", "/api/v1/openapi.json", "").await;
    assert_eq!(status, 200, "the document needs no token: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_undocumented_method_is() {
    let server = start(&format!("[[inventory.stations]]\nmac = \"{STATION}\"\n")).await;
    let addr = server.daemon.http_addr;
    let doc = document(addr).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{} paths", paths.len());
    for (template, ops) in paths {
        assert!(template.starts_with("/api/v1/"), "{template}");
        let path = concrete(template);
        for method in METHODS {
            let documented = ops.get(method.to_ascii_lowercase()).is_some();
            let (status, body) = probe(addr, method, &path, &admin()).await;
            if documented {
                // Routed: neither the fallback's 404 nor a 405. (A 404 of the
                // handler names what it did not find.)
                assert_ne!(status, 405, "{method} {template}: {body}");
                assert!(
                    !body.contains("no such endpoint"),
                    "{method} {template} is documented but not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {template} is routed but not documented: {body}"
                );
            }
        }
    }
    // And a path the document does not have is the fallback's.
    let (status, body) = probe(addr, "GET", "/api/v1/no-such-thing", &admin()).await;
    assert_eq!(
        (status, body.contains("no such endpoint")),
        (404, true),
        "{body}"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_admin_operation_answers_401_without_the_admin_token_and_the_others_name_their_own() {
    let server = start(&format!("[[inventory.stations]]\nmac = \"{STATION}\"\n")).await;
    let addr = server.daemon.http_addr;
    let doc = document(addr).await;
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in ["admin", "agent", "restore"] {
        assert_eq!(
            schemes[name]["scheme"], "bearer",
            "{name}: {}",
            schemes[name]
        );
    }
    let mut admin_ops = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let security: Vec<&str> = op["security"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let open = ["/api/v1/health", "/api/v1/openapi.json"].contains(&template.as_str());
            assert_eq!(
                security.is_empty(),
                open,
                "{method} {template}: security {security:?}"
            );
            let errors = &op["responses"]["401"]["content"]["application/json"]["schema"];
            assert_eq!(
                errors["$ref"], "#/components/schemas/ErrorBody",
                "{method} {template}"
            );
            if security != ["admin"] {
                continue;
            }
            admin_ops += 1;
            let method = method.to_ascii_uppercase();
            for auth in ["", "Authorization: Bearer wrong-token-0123456789\r\n"] {
                let (status, body) = probe(addr, &method, &concrete(template), auth).await;
                assert_eq!(status, 401, "{method} {template} with {auth:?}: {body}");
                let error: Value = serde_json::from_str(&body).unwrap();
                assert!(error["error"].as_str().unwrap().contains("token"), "{body}");
            }
        }
    }
    assert!(admin_ops >= 12, "{admin_ops} admin operations");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_query_string_that_cannot_be_read_is_a_400_in_the_json_error_shape() {
    let server = start(&format!("[[inventory.stations]]\nmac = \"{STATION}\"\n")).await;
    let addr = server.daemon.http_addr;
    for (method, path) in [
        (
            "DELETE",
            format!("/api/v1/stations/{STATION}/reset?force=43"),
        ),
        ("GET", "/api/v1/audit?since=0&unknown=1".to_owned()),
        ("GET", "/api/v1/audit?limit=many".to_owned()),
    ] {
        let (status, head, body) = http_send(addr, method, &path, "", b"").await;
        assert_eq!(status, 400, "{method} {path}");
        assert!(
            head.contains("content-type: application/json"),
            "{method} {path}: {head}"
        );
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{error}"
        );
    }
    server.daemon.shutdown().await.unwrap();
}
