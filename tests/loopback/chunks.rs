//! `GET /chunks/{id}`: stored chunks as the restore client will fetch them.

use crate::support::*;

#[tokio::test]
async fn chunks_are_served_compressed_with_etag_and_verify_against_their_id() {
    let server = start("").await;
    let store = images::ChunkStore::open(server.data.path()).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (id, _) = store.put(&data).unwrap();
    let addr = server.daemon.http_addr;

    let (status, head, body) = http_request(addr, &format!("/chunks/{id}"), "").await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("etag: \"{id}\"")), "{head}");
    assert!(head.contains("immutable"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert!(body.len() < data.len(), "served compressed");
    assert_eq!(images::decode_chunk(&id, &body, data.len()).unwrap(), data);

    let (status, _, body) = http_request(
        addr,
        &format!("/chunks/{id}"),
        &format!("If-None-Match: \"{id}\"\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_and_unknown_chunk_ids_get_clear_errors() {
    let server = start("").await;
    let addr = server.daemon.http_addr;
    let missing = images::ChunkId::of(b"never stored");
    let (status, body) = http_get(addr, &format!("/chunks/{missing}")).await;
    assert_eq!(status, 404);
    assert!(body.contains("missing"), "{body}");
    for bad in [
        "/chunks/..%2f..%2fetc%2fpasswd",
        "/chunks/abc",
        &format!("/chunks/{}", missing.to_string().to_uppercase()),
    ] {
        let (status, body) = http_get(addr, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("not a chunk id"), "{bad}: {body}");
    }
    let (status, _) = http_get(addr, "/chunks/../../etc/passwd").await;
    assert_eq!(status, 404);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_chunk_batch_comes_framed_in_order_and_bad_batches_are_refused() {
    let server = start("").await;
    let store = images::ChunkStore::open(server.data.path()).unwrap();
    let parts: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 70_000]).collect();
    let ids: Vec<images::ChunkId> = parts.iter().map(|p| store.put(p).unwrap().0).collect();
    let addr = server.daemon.http_addr;
    let list = |ids: &[images::ChunkId]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let order = [ids[2], ids[0], ids[1], ids[0]];
    let (status, body) = http_get_bytes(addr, &format!("/chunks?ids={}", list(&order))).await;
    assert_eq!(status, 200);
    let frames = images::http::unframe(&body, order.len()).expect("four frames");
    for (id, frame) in order.iter().zip(&frames) {
        let want = &parts[ids.iter().position(|i| i == id).unwrap()];
        assert_eq!(&images::decode_chunk(id, frame, 70_000).unwrap(), want);
    }
    let missing = images::ChunkId::of(b"never stored");
    let (status, _) = http_get(addr, &format!("/chunks?ids={},{missing}", ids[0])).await;
    assert_eq!(status, 404);
    let many = vec![ids[0]; 65];
    for bad in [
        "/chunks?ids=".to_owned(),
        "/chunks?ids=../x".to_owned(),
        format!("/chunks?ids={}", list(&many)),
    ] {
        let (status, body) = http_get(addr, &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    server.daemon.shutdown().await.unwrap();
}
