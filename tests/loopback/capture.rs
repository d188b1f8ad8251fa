//! Captures over loopback: the admin asks for a capture of a station, its boot
//! script chains the restore environment in capture mode, and the capture client
//! (in-process, the same code as `netreset-restore --capture`) reads a file-backed
//! disk into a new image through the daemon's HTTP API, uploading only what the
//! store lacks; the disk is never written.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::Path;

use images::client::{run_capture, CaptureOutcome, Options};
use images::{Chunk, ChunkId, ChunkStore, Images, Index};

use crate::support::*;

const MAC: &str = "02:00:00:00:00:41";
const CHUNK: u64 = 64 << 10;

fn inventory() -> String {
    format!("[[inventory.stations]]\nmac = \"{MAC}\"\nname = \"ref41\"\n")
}

fn install_restore_env(data: &Path) {
    std::fs::create_dir_all(data.join("restore")).unwrap();
    std::fs::write(data.join("restore/vmlinuz"), b"kernel stand-in").unwrap();
    std::fs::write(data.join("restore/initrd.img"), b"initrd stand-in").unwrap();
}

/// A daemon with a stand-in restore environment, and the reference PC's disk (a
/// sample disk: GPT, two FAT partitions) in a scratch directory.
async fn reference_pc() -> (TestServer, tempfile::TempDir, std::path::PathBuf) {
    let server = start(&inventory()).await;
    install_restore_env(server.data.path());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("station.raw");
    images::sample::sample_disk(&disk, 48 << 20, 7).unwrap();
    (server, dir, disk)
}

async fn ask_capture(server: &TestServer, body: &str) -> (u16, serde_json::Value) {
    post_json(
        server.daemon.http_addr,
        &format!("/api/v1/stations/{MAC}/capture"),
        "",
        body,
    )
    .await
}

/// The station's boot script and the `netreset.*` arguments in it.
async fn script(server: &TestServer) -> (String, HashMap<String, String>) {
    boot_script(server, MAC).await
}

fn options(args: &HashMap<String, String>, disk: &Path) -> Options {
    Options {
        server: args["server"].clone(),
        station: args["station"].clone(),
        token: args["token"].clone(),
        image: String::new(),
        disk: disk.to_owned(),
        parallel: 4,
        max_mbit: None,
        retry_for: std::time::Duration::from_secs(2),
        peer_listen: None,
    }
}

async fn capture(opts: Options) -> Result<CaptureOutcome, images::Error> {
    tokio::task::spawn_blocking(move || run_capture(&opts, &|_| {}))
        .await
        .unwrap()
}

/// What `netreset image import` makes of `disk`, in a store of its own.
fn imported(disk: &Path) -> Index {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    images::import(&store, disk, CHUNK, |_| {}).unwrap().index
}

async fn station(server: &TestServer) -> serde_json::Value {
    get_json(server.daemon.http_addr, &format!("/api/v1/stations/{MAC}"))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_makes_the_image_an_import_of_the_disk_makes_and_never_writes_the_disk() {
    let (server, _dir, disk) = reference_pc().await;
    let (status, body) = ask_capture(&server, r#"{"name": "ref-v1"}"#).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["image"].as_str()),
        (Some("pending"), Some("ref-v1"))
    );
    let (text, args) = script(&server).await;
    assert_eq!(
        args.get("mode").map(String::as_str),
        Some("capture"),
        "{text}"
    );
    assert!(
        !args.contains_key("image"),
        "a capture stages nothing: {text}"
    );
    assert_eq!(args["disk"], "/dev/vda", "{text}");

    let before = std::fs::read(&disk).unwrap();
    let modified = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let outcome = capture(options(&args, &disk)).await.unwrap();
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "the disk is only read"
    );
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        modified
    );

    let images = Images::open(server.data.path()).unwrap();
    let index = images.get("ref-v1").unwrap();
    assert_eq!(
        index,
        imported(&disk),
        "the capture is what an import makes"
    );
    assert!(
        index.layout.bytes_of(images::RunKind::Free) > 0,
        "the FAT's free space is free in the image"
    );
    assert_eq!(outcome.chunks_data, index.ids.len() as u64);
    assert_eq!(
        outcome.chunks_uploaded,
        index
            .ids
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len() as u64,
        "an empty store lacked every distinct chunk"
    );
    // Every chunk in the store is the disk's: read back and compared.
    let store = ChunkStore::open(server.data.path()).unwrap();
    for (i, chunk) in index.chunks().enumerate() {
        if let Chunk::Data(id) = chunk {
            let at = i * CHUNK as usize;
            let want = &before[at..(at + CHUNK as usize).min(before.len())];
            assert_eq!(store.get(&id, CHUNK as usize).unwrap(), want, "chunk {i}");
        }
    }
    let st = station(&server).await;
    assert_eq!(st["capture"]["state"], "done", "{st}");
    assert_eq!(st["capture"]["index"], index.id().to_string(), "{st}");
    let kinds: Vec<&str> = st["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["capture-requested", "capture-started", "capture-done"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let (text, _) = script(&server).await;
    assert!(
        text.contains("exit"),
        "local disk again after the capture: {text}"
    );

    // A small change (three chunks of the Windows partition), captured again: only
    // those three go over the wire.
    let changed: Vec<usize> = index
        .chunks()
        .enumerate()
        .filter(|(_, c)| matches!(c, Chunk::Data(_)))
        .map(|(i, _)| i)
        .skip(40)
        .step_by(9)
        .take(3)
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for &i in &changed {
        f.write_all_at(b"changed by a student", i as u64 * CHUNK + 100)
            .unwrap();
    }
    drop(f);
    let (status, body) = ask_capture(&server, r#"{"name": "ref-v2"}"#).await;
    assert_eq!(status, 202, "{body}");
    let (_, args) = script(&server).await;
    let again = capture(options(&args, &disk)).await.unwrap();
    assert_eq!(again.chunks_uploaded, 3, "{again:?}");
    let v2 = images.get("ref-v2").unwrap();
    assert_eq!(v2, imported(&disk));
    let differ: Vec<usize> = index
        .chunks()
        .zip(v2.chunks())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(differ, changed);
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_calls_need_the_token_the_first_address_and_chunks_that_match_their_ids() {
    let (server, _dir, disk) = reference_pc().await;
    let addr = server.daemon.http_addr;
    for (body, status) in [
        (r#"{"name": "../etc"}"#, 400),
        (r#"{"name": "ok", "chunk_size": 1000}"#, 400),
        (r#"{"name": "ok", "extra": 1}"#, 400),
    ] {
        let (got, answer) = ask_capture(&server, body).await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    assert_eq!(ask_capture(&server, r#"{"name": "ref"}"#).await.0, 202);
    let (again, answer) = ask_capture(&server, r#"{"name": "other"}"#).await;
    assert_eq!(again, 409, "one capture at a time: {answer}");
    let (status, answer) = post_json(
        addr,
        &format!("/api/v1/stations/{MAC}/reset"),
        "",
        r#"{"image": "ref"}"#,
    )
    .await;
    assert_eq!(status, 409, "no reset over a capture: {answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("captured"),
        "{answer}"
    );

    let (_, args) = script(&server).await;
    let auth = format!("Authorization: Bearer {}\r\n", args["token"]);
    let path = |p: &str| format!("/api/v1/stations/{MAC}/capture/{p}");
    let id = ChunkId::of(b"a chunk");
    let ask = id.0.to_vec();
    // No token; the admin's; the right one before the first progress report.
    for extra in [NO_AUTH.to_owned(), String::new(), auth.clone()] {
        let (status, _, body) = http_send(addr, "POST", &path("missing"), &extra, &ask).await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    }
    let report = br#"{"state": "running", "done_bytes": 0, "total_bytes": 1}"#;
    let json = format!("{auth}Content-Type: application/json\r\n");
    let (status, _, body) = http_send(addr, "POST", &path("progress"), &json, report).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let plan: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(plan["chunk_size"], CHUNK, "{plan}");
    let (status, _, body) = http_send(addr, "POST", &path("missing"), &auth, &ask).await;
    assert_eq!((status, body), (200, vec![1]));
    // A student's PC with the token it overheard.
    let student = Ipv4Addr::new(127, 0, 0, 2);
    let (status, _, _) = http_send_from(addr, student, "POST", &path("missing"), &auth, &ask).await;
    assert_eq!(status, 401);
    // Ragged ids; too many at once.
    let (status, _, _) = http_send(addr, "POST", &path("missing"), &auth, &ask[..31]).await;
    assert_eq!(status, 400);
    let many = vec![7u8; 32 * 4097];
    let (status, _, _) = http_send(addr, "POST", &path("missing"), &auth, &many).await;
    assert_eq!(status, 400);

    // A chunk that is not what its id says, beside a good one: nothing is stored.
    let good = b"a chunk".to_vec();
    let frame = |id: &ChunkId, data: &[u8]| {
        let z = zstd::bulk::compress(data, 3).unwrap();
        let mut f = id.0.to_vec();
        f.extend_from_slice(&(z.len() as u32).to_le_bytes());
        f.extend_from_slice(&z);
        f
    };
    let mut lying = frame(&id, &good);
    lying.extend(frame(&ChunkId::of(b"other"), b"not other"));
    let (status, _, body) = http_send(addr, "POST", &path("chunks"), &auth, &lying).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let store = ChunkStore::open(server.data.path()).unwrap();
    assert!(!store.has(&id), "a batch with a lying chunk stores none");
    let (status, _, _) = http_send(
        addr,
        "POST",
        &path("chunks"),
        &auth,
        &frame(&id, &good)[..40],
    )
    .await;
    assert_eq!(status, 400, "a torn frame");
    let (status, _, body) =
        http_send(addr, "POST", &path("chunks"), &auth, &frame(&id, &good)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(store.has(&id));

    // An index that names a chunk nobody uploaded, or of another chunk size.
    let absent = ChunkId::of(b"never uploaded");
    let index = Index::build(CHUNK as u32, CHUNK, [Chunk::Data(absent)].into_iter());
    let (status, _, _) = http_send(addr, "POST", &path("index"), &auth, &index.encode()).await;
    assert_eq!(status, 409);
    let index = Index::build(CHUNK as u32 * 2, CHUNK * 2, [Chunk::Data(id)].into_iter());
    let (status, _, _) = http_send(addr, "POST", &path("index"), &auth, &index.encode()).await;
    assert_eq!(status, 400);
    let (status, _, _) = http_send(addr, "POST", &path("index"), &auth, b"garbage").await;
    assert_eq!(status, 400);
    assert!(
        Images::open(server.data.path())
            .unwrap()
            .get("ref")
            .is_err(),
        "no image yet"
    );

    // Cancelled: the token is worth nothing, the station boots its disk.
    let (status, _, _) = http_send(
        addr,
        "DELETE",
        &format!("/api/v1/stations/{MAC}/capture"),
        "",
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = http_send(addr, "POST", &path("missing"), &auth, &ask).await;
    assert_eq!(status, 401);
    let (text, _) = script(&server).await;
    assert!(text.contains("exit"), "{text}");
    drop(disk);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_disk_is_refused_and_the_capture_reports_why() {
    let (server, _dir, disk) = reference_pc().await;
    // The Windows partition's boot sector as BitLocker writes it: OEM id -FVE-FS-.
    let parts = images::partition::partitions(&disk).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(b"-FVE-FS-", parts[1].start + 3).unwrap();
    drop(f);
    assert_eq!(ask_capture(&server, r#"{"name": "locked"}"#).await.0, 202);
    let (_, args) = script(&server).await;
    let err = capture(options(&args, &disk)).await.unwrap_err();
    assert!(err.to_string().contains("BitLocker"), "{err}");
    let st = station(&server).await;
    assert_eq!(st["capture"]["state"], "failed", "{st}");
    assert!(
        st["capture"]["error"]
            .as_str()
            .unwrap()
            .contains("manage-bde"),
        "{st}"
    );
    assert!(Images::open(server.data.path())
        .unwrap()
        .get("locked")
        .is_err());
}
