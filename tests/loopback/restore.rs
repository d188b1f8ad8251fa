//! Station resets over loopback: the admin marks a station, its boot script chains the
//! restore environment with a per-restore token, and the restore client (in-process,
//! the same code as `netreset-restore`) resets a file-backed disk through the daemon's
//! HTTP API, reports, and the station boots its local disk again.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use images::client::{run, Options, Outcome};

use crate::support::*;

const MAC: &str = "02:00:00:00:00:31";
const CHUNK: usize = 64 << 10;

fn inventory() -> String {
    format!("[[inventory.stations]]\nmac = \"{MAC}\"\nname = \"pc31\"\n")
}

/// 96 chunks of 64 KiB: noise, with zero chunks every 7th, and a short tail.
fn image_bytes() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes: Vec<u8> = (0..96 * CHUNK - 3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for c in (0..96).step_by(7) {
        bytes[c * CHUNK..(c + 1) * CHUNK].fill(0);
    }
    bytes
}

fn nonzero_chunks(image: &[u8]) -> u64 {
    image
        .chunks(CHUNK)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
}

/// Import `image` as "lab" into the server's catalog, and install a stand-in restore
/// environment (resets are refused without one).
fn import(data: &Path, image: &[u8]) {
    let file = data.join("lab.raw");
    std::fs::write(&file, image).unwrap();
    import_file(data, &file);
}

/// Import the disk image at `file` as "lab" (and install the restore environment).
fn import_file(data: &Path, file: &Path) {
    install_restore_env(data);
    let store = images::ChunkStore::open(data).unwrap();
    let imported = images::import(&store, file, CHUNK as u64, |_| {}).unwrap();
    images::Images::open(data)
        .unwrap()
        .add("lab", &imported.index)
        .unwrap();
}

fn install_restore_env(data: &Path) {
    std::fs::create_dir_all(data.join("restore")).unwrap();
    std::fs::write(data.join("restore/vmlinuz"), b"kernel stand-in").unwrap();
    std::fs::write(data.join("restore/initrd.img"), b"initrd stand-in").unwrap();
}

/// A daemon with the "lab" image and MAC marked for a plain reset: the server, the
/// image, the restore arguments from the boot script, and a scratch directory.
async fn marked() -> (
    TestServer,
    Vec<u8>,
    HashMap<String, String>,
    tempfile::TempDir,
) {
    let server = start(&inventory()).await;
    let image = image_bytes();
    import(server.data.path(), &image);
    reset(&server, "plain").await;
    let (_, args) = script(&server).await;
    (server, image, args, tempfile::tempdir().unwrap())
}

/// Ask for a reset; returns the staged id.
async fn reset(server: &TestServer, profile: &str) -> String {
    let (status, body) = post_json(
        server.daemon.http_addr,
        &format!("/api/v1/stations/{MAC}/reset"),
        "",
        &format!(r#"{{"image": "lab", "profile": "{profile}"}}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["staged"].as_str().unwrap().to_owned()
}

/// The station's boot script, and the `netreset.*` arguments in it.
async fn script(server: &TestServer) -> (String, HashMap<String, String>) {
    boot_script(server, MAC).await
}

/// The restore client's options from the boot script's arguments, onto `disk`.
pub(crate) fn options(args: &HashMap<String, String>, disk: &Path) -> Options {
    Options {
        server: args["server"].clone(),
        station: args["station"].clone(),
        token: args["token"].clone(),
        image: args["image"].clone(),
        disk: disk.to_owned(),
        parallel: 4,
        max_mbit: None,
        retry_for: std::time::Duration::from_secs(2),
        peer_listen: None,
    }
}

/// Run the restore client on a blocking thread (it is blocking code).
async fn restore(opts: Options) -> Result<Outcome, images::Error> {
    tokio::task::spawn_blocking(move || run(&opts, &|_| {}))
        .await
        .unwrap()
}

async fn station(server: &TestServer) -> serde_json::Value {
    get_json(server.daemon.http_addr, &format!("/api/v1/stations/{MAC}"))
        .await
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_chains_the_restore_environment_until_the_restore_reports_done() {
    let server = start(&inventory()).await;
    let image = image_bytes();
    import(server.data.path(), &image);
    let (text, _) = script(&server).await;
    assert!(
        text.contains("exit"),
        "boots local disk before a reset: {text}"
    );

    let staged = reset(&server, "plain").await;
    let (text, args) = script(&server).await;
    let base = &server.daemon.public_url;
    assert!(
        text.contains(&format!("kernel {base}/restore/vmlinuz initrd=initrd.img ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("initrd {base}/restore/initrd.img")),
        "{text}"
    );
    assert_eq!(args["server"], *base);
    assert_eq!(args["station"], MAC);
    assert_eq!(args["image"], staged);
    assert!(args["token"].len() > 64, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; image.len() + 4096]).unwrap();
    let outcome = restore(options(&args, &disk)).await.unwrap();
    assert_eq!(outcome.stats.chunks_fetched, nonzero_chunks(&image));
    assert_eq!(outcome.injected, 0, "a plain reset injects nothing");
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(&back[..image.len()], &image[..], "byte-identical");

    let (text, _) = script(&server).await;
    assert!(
        !text.contains("kernel"),
        "local disk again after done: {text}"
    );
    let st = station(&server).await;
    assert_eq!(st["reset"]["state"], "done", "{st}");
    assert_eq!(st["reset"]["percent"], 100.0, "{st}");
    let kinds: Vec<&str> = st["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["reset-requested", "restore-started", "restore-done"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }

    // A second reset of the now identical disk fetches nothing.
    reset(&server, "plain").await;
    let (_, args) = script(&server).await;
    let again = restore(options(&args, &disk)).await.unwrap();
    assert_eq!(
        (again.stats.chunks_fetched, again.stats.bytes_fetched),
        (0, 0)
    );
    // Of the index, only the summary: no group differs.
    let summary = images::Images::open(server.data.path())
        .unwrap()
        .get("lab")
        .unwrap()
        .summary()
        .encode()
        .len() as u64;
    assert_eq!(again.stats.index_bytes_fetched, summary);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_restore_fetches_only_the_changed_chunks() {
    let (server, image, args, dir) = marked().await;
    let disk = dir.path().join("disk");
    let mut changed = image.clone();
    for at in [5 * CHUNK + 11, 40 * CHUNK, 41 * CHUNK + 1, 90 * CHUNK + 7] {
        changed[at] ^= 0x5a;
    }
    changed[14 * CHUNK + 3] = 1; // a zero chunk: emptied in place, nothing fetched
    std::fs::write(&disk, &changed).unwrap();
    let outcome = restore(options(&args, &disk)).await.unwrap();
    assert_eq!(outcome.stats.chunks_fetched, 4);
    assert_eq!(
        outcome.stats.zero_chunks_written, 0,
        "emptied by fallocate, not written"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    assert!(
        outcome.stats.bytes_fetched as f64 <= 1.1 * 4.0 * CHUNK as f64,
        "{} bytes for 4 changed chunks",
        outcome.stats.bytes_fetched
    );
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restore_api_refuses_wrong_tokens_and_bad_requests() {
    let server = start(&inventory()).await;
    let addr = server.daemon.http_addr;
    import(server.data.path(), &image_bytes());
    let other = "02:00:00:00:00:32";

    // Reset requests. Without the restore environment, a station would be sent to a
    // kernel that is not there: refused.
    let path = format!("/api/v1/stations/{MAC}/reset");
    std::fs::remove_file(server.data.path().join("restore/initrd.img")).unwrap();
    let (status, answer) =
        post_json(addr, &path, "", r#"{"image": "lab", "profile": "plain"}"#).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("initrd.img"),
        "{answer}"
    );
    install_restore_env(server.data.path());
    let (status, _, body) = http_request(addr, "/restore/vmlinuz", "").await;
    assert_eq!((status, body.as_slice()), (200, &b"kernel stand-in"[..]));
    let (status, _, _) = http_request(addr, "/restore/../secret", "").await;
    assert_eq!(status, 404);
    for (body, want, says) in [
        (
            r#"{"image": "nope", "profile": "plain"}"#,
            404,
            "no image named",
        ),
        (
            r#"{"image": "lab", "profile": "gold"}"#,
            400,
            "unknown profile",
        ),
        (
            r#"{"image": "../lab", "profile": "plain"}"#,
            400,
            "not an image name",
        ),
        (r#"{"image": "lab", "profile": "kms"}"#, 409, "[kms] host"),
        (r#"{"image": "lab""#, 400, "request body"),
        (
            r#"{"image": "lab", "profile": "plain", "x": 1}"#,
            400,
            "unknown field",
        ),
    ] {
        let (status, answer) = post_json(addr, &path, "", body).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }
    let (status, _) = post_json(
        addr,
        &format!("/api/v1/stations/{other}/reset"),
        "",
        r#"{"image": "lab", "profile": "plain"}"#,
    )
    .await;
    assert_eq!(status, 404, "an unknown station cannot be reset");
    let st = station(&server).await;
    assert!(st["reset"].is_null(), "nothing was marked: {st}");

    // The restore client's calls need this station's token for this image.
    let staged = reset(&server, "plain").await;
    let (_, args) = script(&server).await;
    let token = &args["token"];
    let json_path = format!("/api/v1/stations/{MAC}/station.json");
    let (status, _, _) = http_request(addr, &json_path, "").await;
    assert_eq!(status, 401, "no token");
    let (status, _, _) = http_request(addr, &json_path, "Authorization: Bearer 1.2\r\n").await;
    assert_eq!(status, 401, "a made-up token");
    let (status, _, _) = http_request(
        addr,
        &format!("/api/v1/stations/{other}/station.json"),
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 401, "another station's token");
    let (status, _, body) = http_request(
        addr,
        &json_path,
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["station"], MAC);
    assert_eq!(doc["image"], staged);
    assert_eq!(
        doc["token"].as_str().unwrap().len(),
        64,
        "the agent token: {doc}"
    );

    let progress = format!("/api/v1/stations/{MAC}/restore-progress");
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (body, want) in [
        ("{", 400),
        (r#"{"state": "sleeping", "image": "IMG"}"#, 400),
        (r#"{"state": "running", "image": "0000"}"#, 409),
    ] {
        let body = body.replace("IMG", &staged);
        let (status, answer) = post_json(addr, &progress, &auth, &body).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = post_json(addr, &progress, "", r#"{"state": "done", "image": "x"}"#).await;
    assert_eq!(status, 401);
    assert_eq!(
        station(&server).await["reset"]["state"],
        "pending",
        "no report took"
    );

    // Staged indexes: bad ids and unknown ones.
    for (path, want) in [
        ("/images/..%2fx/index".to_owned(), 400),
        (format!("/images/{}/index", "0".repeat(64)), 404),
        (format!("/images/{staged}/index"), 200),
    ] {
        let (status, _, _) = http_request(addr, &path, "").await;
        assert_eq!(status, want, "{path}");
    }
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_staged_index_is_refused_with_the_reason_and_the_disk_untouched() {
    let server = start(&inventory()).await;
    let image = image_bytes();
    import(server.data.path(), &image);
    let staged = reset(&server, "plain").await;
    let (_, args) = script(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![7u8; image.len()]).unwrap();
    let file = server.data.path().join(format!("staged/{staged}.stg"));
    let good = std::fs::read(&file).unwrap();

    let mut version = good.clone();
    version[8] = 9;
    let mut flipped = good.clone();
    // The last byte of the index id (the file count, 0, follows).
    let in_id = flipped.len() - 5;
    flipped[in_id] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 3].to_vec()),
        ("unknown format version 9", version),
        // Decodes, but is not what its id names.
        ("corrupt", flipped),
    ];
    for (says, bytes) in cases {
        std::fs::write(&file, &bytes).unwrap();
        let err = restore(options(&args, &disk))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{says}: {err}");
    }
    // Oversized: refused from its Content-Length, before it is read.
    std::fs::File::create(&file)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let err = restore(options(&args, &disk))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than"), "{err}");
    // An id that is not one, such as a path.
    let mut opts = options(&args, &disk);
    opts.image = "../x".into();
    let err = restore(opts).await.unwrap_err().to_string();
    assert!(err.contains("not a staged image id"), "{err}");

    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 7),
        "disk untouched"
    );
    let st = station(&server).await;
    assert_eq!(st["reset"]["state"], "failed", "{st}");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_stored_chunk_fails_the_restore_loudly_and_is_never_written() {
    let (server, image, args, dir) = marked().await;
    // Replace chunk 3's stored bytes with a valid compression of other data.
    let id = images::ChunkId::of(&image[3 * CHUNK..4 * CHUNK]);
    let hex = id.to_string();
    let stored = server.data.path().join("chunks").join(&hex[..2]).join(&hex);
    let lie = zstd_of(&image[5 * CHUNK..6 * CHUNK]);
    std::fs::write(&stored, lie).unwrap();

    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; image.len()]).unwrap();
    let mut opts = options(&args, &disk);
    opts.parallel = 1;
    let err = restore(opts).await.unwrap_err().to_string();
    assert!(
        err.contains(&hex) && err.contains("does not match"),
        "{err}"
    );
    let back = std::fs::read(&disk).unwrap();
    assert!(
        back[3 * CHUNK..4 * CHUNK].iter().all(|&b| b == 0),
        "the bad chunk was not written"
    );
    let st = station(&server).await;
    assert_eq!(st["reset"]["state"], "failed");
    assert!(
        st["reset"]["error"].as_str().unwrap().contains(&hex),
        "{st}"
    );
    server.daemon.shutdown().await.unwrap();
}

fn zstd_of(data: &[u8]) -> Vec<u8> {
    // The store's own encoding, through a scratch store.
    let dir = tempfile::tempdir().unwrap();
    let store = images::ChunkStore::open(dir.path()).unwrap();
    let (id, _) = store.put(data).unwrap();
    store.get_compressed(&id).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_gone_mid_restore_is_a_clear_error_and_a_rerun_completes() {
    let (server, image, args, dir) = marked().await;
    let disk = dir.path().join("disk");
    std::fs::write(&disk, vec![0u8; image.len()]).unwrap();

    // 4 Mbit/s: the ~5 MiB restore would take about 10 s; the server goes first.
    let mut opts = options(&args, &disk);
    opts.max_mbit = Some(4.0);
    let running = tokio::spawn(restore(opts));
    eventually(|| async {
        let st = station(&server).await;
        (st["reset"]["state"] == "restoring").then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let TestServer { daemon, data, .. } = server;
    daemon.shutdown().await.unwrap();
    let err = running.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("cannot connect") || err.contains("reading"),
        "{err}"
    );
    assert_ne!(std::fs::read(&disk).unwrap(), image, "stopped part way");

    // The daemon comes back on the same data (new port, same secret): the same token
    // works, and the rerun finishes the job.
    let server = start_in(data, &inventory()).await;
    let mut opts = options(&args, &disk);
    opts.server = server.daemon.public_url.clone();
    let outcome = restore(opts).await.unwrap();
    assert!(
        outcome.stats.chunks_in_place > 0,
        "the first run's chunks were kept"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_reset_gives_station_json_its_families_and_a_new_agent_token_each_time() {
    let kms = "[kms]\nhost = \"kms.school.example\"\nfamilies = [\"windows\"]\n";
    let server = start(&format!("{}{kms}", inventory())).await;
    let addr = server.daemon.http_addr;
    let sample = server.data.path().join("sample.img");
    images::sample::sample_disk(&sample, 40 << 20, 1).unwrap();
    import_file(server.data.path(), &sample);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let staged = reset(&server, "kms").await;
        let (_, args) = script(&server).await;
        let (status, _, body) = http_request(
            addr,
            &format!("/api/v1/stations/{MAC}/station.json"),
            &format!("Authorization: Bearer {}\r\n", args["token"]),
        )
        .await;
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["families"], serde_json::json!(["windows"]), "{doc}");
        assert_eq!(
            (doc["profile"].as_str(), doc["image"].as_str()),
            (Some("kms"), Some(staged.as_str()))
        );
        tokens.push(doc["token"].as_str().unwrap().to_owned());
    }
    assert_ne!(tokens[0], tokens[1], "each reset makes a new agent token");
    server.daemon.shutdown().await.unwrap();
}

/// A file of a FAT partition of `disk`, read with fatfs.
fn fat_file(disk: &Path, part: usize, path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let parts = images::partition::partitions(disk).unwrap();
    let file = std::fs::File::open(disk).unwrap();
    let fs = fatfs::FileSystem::new(
        images::partition::Slice::new(&file, &parts[part]),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let mut f = fs.root_dir().open_file(path).ok()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).unwrap();
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_restore_injects_the_kms_settings_agent_and_station_json_into_windows() {
    let kms = "[kms]\nhost = \"kms.school.example\"\nport = 1700\n";
    let server = start(&format!("{}{kms}", inventory())).await;
    let sample = server.data.path().join("sample.img");
    images::sample::sample_disk(&sample, 40 << 20, 7).unwrap();
    import_file(server.data.path(), &sample);
    reset(&server, "kms").await;
    let (_, args) = script(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let outcome = restore(options(&args, &disk)).await.unwrap();
    assert_eq!(
        outcome.injected, 4,
        "SetupComplete, agent, station.json and its FAT copy"
    );

    let setup =
        String::from_utf8(fat_file(&disk, 1, "Windows/Setup/Scripts/SetupComplete.cmd").unwrap())
            .unwrap();
    assert!(
        setup.contains("set \"NR_KMS=kms.school.example\"\r\n"),
        "{setup}"
    );
    assert!(setup.contains("set \"NR_PORT=1700\"\r\n"), "{setup}");
    let agent = fat_file(&disk, 1, "Windows/Setup/Scripts/netreset-agent.ps1").unwrap();
    assert!(String::from_utf8(agent)
        .unwrap()
        .contains("/api/v1/agent/report"));
    let station: serde_json::Value =
        serde_json::from_slice(&fat_file(&disk, 1, "Windows/Setup/Scripts/station.json").unwrap())
            .unwrap();
    assert_eq!(station["station"], MAC);
    assert_eq!(station["server"], server.daemon.public_url.as_str());
    assert_eq!(station["token"].as_str().map(str::len), Some(64));
    let esp: serde_json::Value =
        serde_json::from_slice(&fat_file(&disk, 0, "netreset/station.json").unwrap()).unwrap();
    assert!(
        esp.get("token").is_none(),
        "the ESP copy has no token: {esp}"
    );
    assert_eq!(esp["image"], station["image"]);
    // What the image had is still there.
    assert!(fat_file(&disk, 1, "Windows/System32/ntoskrnl.exe").is_some());
    assert!(fat_file(&disk, 0, "EFI/BOOT/BOOTX64.EFI").is_some());
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restore_disk_is_the_stations_or_restore_disk_and_never_a_guess() {
    // No restore.disk and no disk of the station's: refused, nothing marked.
    let server = start(&format!(
        "{}[restore]\nmax_mbit = 300\ncmdline = \"console=ttyS0\"\n",
        inventory()
    ))
    .await;
    import(server.data.path(), &image_bytes());
    let path = format!("/api/v1/stations/{MAC}/reset");
    let addr = server.daemon.http_addr;
    let (status, body) = post_json(addr, &path, "", r#"{"image": "lab"}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("never guesses a disk"),
        "{body}"
    );
    assert!(station(&server).await["reset"].is_null());
    // A bad disk setting is refused and changes nothing.
    for bad in [
        "sda",
        "/dev/../etc/passwd",
        "/dev/sda;reboot",
        "/dev/",
        "/dev//sda",
    ] {
        let (status, _, body) = http_send(
            addr,
            "PUT",
            &format!("/api/v1/stations/{MAC}"),
            "Content-Type: application/json\r\n",
            format!(r#"{{"disk": "{bad}"}}"#).as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    assert!(station(&server).await["disk"].is_null());
    // The station's disk goes on the kernel command line, with the bandwidth cap.
    let (status, _, _) = http_send(
        addr,
        "PUT",
        &format!("/api/v1/stations/{MAC}"),
        "Content-Type: application/json\r\n",
        br#"{"disk": "/dev/nvme0n1"}"#,
    )
    .await;
    assert_eq!(status, 200);
    reset(&server, "plain").await;
    let (text, args) = script(&server).await;
    assert_eq!(args["disk"], "/dev/nvme0n1", "{text}");
    assert_eq!(args["max_mbit"], "300", "{text}");
    assert!(text.contains(" console=ttyS0"), "{text}");
    assert_eq!(station(&server).await["reset"]["disk"], "/dev/nvme0n1");
    server.daemon.shutdown().await.unwrap();

    // restore.disk when the station names none.
    let server = start(&inventory()).await;
    import(server.data.path(), &image_bytes());
    reset(&server, "plain").await;
    assert_eq!(script(&server).await.1["disk"], "/dev/vda");
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_the_restore_environment_reports_fails_the_reset_with_the_log_tail() {
    let (server, _, args, _dir) = marked().await;
    let log = format!(
        "{}disk /dev/vda not found (disks here: sda)",
        "x".repeat(5000)
    );
    let opts = options(&args, Path::new("/nonexistent"));
    tokio::task::spawn_blocking(move || images::client::report_failure(&opts, &log))
        .await
        .unwrap()
        .unwrap();
    let st = station(&server).await;
    assert_eq!(st["reset"]["state"], "failed", "{st}");
    let error = st["reset"]["error"].as_str().unwrap();
    assert!(
        error.ends_with("disk /dev/vda not found (disks here: sda)"),
        "{error}"
    );
    assert!(error.len() <= 2000, "the tail only: {} chars", error.len());
    // A wrong token reports nothing: the real one with its last character changed
    // (to another character whatever it was, so the forgery is never the token).
    let mut forged = options(&args, Path::new("/nonexistent"));
    let (head, last) = forged.token.split_at(forged.token.len() - 1);
    let other = if last == "0" { '1' } else { '0' };
    forged.token = format!("{head}{other}");
    assert_ne!(forged.token, args["token"]);
    let refused =
        tokio::task::spawn_blocking(move || images::client::report_failure(&forged, "forged"))
            .await
            .unwrap();
    assert!(refused.is_err());
    assert!(!station(&server).await["reset"]["error"]
        .as_str()
        .unwrap()
        .contains("forged"));
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_progress_reports_and_a_cancel_never_leave_a_reset_no_request_wrote() {
    let (server, _image, _args, _disks) = marked().await;
    let addr = server.daemon.http_addr;
    let progress = format!("/api/v1/stations/{MAC}/restore-progress");
    for round in 0..20u64 {
        if round > 0 {
            reset(&server, "plain").await;
        }
        let (_, args) = script(&server).await;
        let auth = format!("Authorization: Bearer {}\r\n", args["token"]);
        let mut posts = Vec::new();
        let mut cancel = None;
        for i in 0..40u64 {
            if i == 20 {
                cancel = Some(tokio::spawn(async move {
                    http_send(
                        addr,
                        "DELETE",
                        &format!("/api/v1/stations/{MAC}/reset?force=true"),
                        "",
                        b"",
                    )
                    .await
                    .0
                }));
            }
            let (progress, auth, body) = (
                progress.clone(),
                auth.clone(),
                format!(
                    r#"{{"state": "running", "image": "{}", "done_bytes": {}, "total_bytes": 1000}}"#,
                    args["image"],
                    round * 100 + i
                ),
            );
            posts.push(tokio::spawn(async move {
                post_json(addr, &progress, &auth, &body).await.0
            }));
        }
        let statuses: Vec<u16> = futures_join(posts).await;
        let cancelled = cancel.expect("spawned").await.unwrap();
        assert_eq!(
            cancelled, 200,
            "round {round}: a forced cancel of an active reset"
        );
        // Every report either landed before the cancel or was refused after it:
        // none brings the reset back.
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 401),
            "round {round}: {statuses:?}"
        );
        assert!(
            station(&server).await["reset"].is_null(),
            "round {round}: a report resurrected the cancelled reset ({statuses:?})"
        );
    }
    server.daemon.shutdown().await.unwrap();
}

/// Wait for every task; their results in order.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_token_goes_only_to_the_address_dhcp_saw_for_the_station() {
    let server = start(&inventory()).await;
    import(server.data.path(), &image_bytes());
    reset(&server, "plain").await;
    let (station, student) = (Ipv4Addr::new(127, 91, 0, 5), Ipv4Addr::new(127, 0, 0, 9));
    let path = format!("/boot/{MAC}.ipxe");
    let addr = server.daemon.http_addr;
    // Before DHCP saw the station, nobody gets a token, not even from its address.
    let (status, text) = http_get_from(addr, station, &path).await;
    assert_eq!(status, 200);
    assert!(!text.contains("netreset.token"), "{text}");
    // A student writes the station's address into a packet of their own: it does
    // not count as the station's.
    let forger = PxeClient::new(student, [0x52, 0x54, 0, 0, 0, 9]).await;
    let mut forged = <dhcproto::v4::Message as dhcproto::Decodable>::decode(
        &mut dhcproto::Decoder::new(&forger.packet(
            dhcproto::v4::MessageType::Request,
            9,
            Some("PXEClient:Arch:00000:UNDI:002001"),
            0,
            &[],
        )),
    )
    .unwrap();
    forged.set_chaddr(&MAC.parse::<pxe::MacAddr>().unwrap().octets());
    forged.set_ciaddr(station);
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&forged, &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    forger.send(&bytes, server.pxe()).await;
    let _ = forger.recv(std::time::Duration::from_secs(2)).await;
    let (_, text) = http_get_from(addr, station, &path).await;
    assert!(
        !text.contains("netreset.token"),
        "a forged ciaddr binds nothing: {text}"
    );
    // DHCP sees the station at its address: its script carries the token there, and
    // the same script asked for from the student's address carries none.
    dhcp_seen(&server, MAC, station).await;
    let (_, text) = http_get_from(addr, student, &path).await;
    assert!(!text.contains("netreset.token"), "{text}");
    assert!(
        text.contains("exit"),
        "the student's script boots the disk: {text}"
    );
    let (_, text) = http_get_from(addr, station, &path).await;
    assert!(text.contains("netreset.token="), "{text}");
    // The withheld attempt is an event that names both addresses.
    let detail = eventually(|| async {
        let (_, st) = get_json(addr, &format!("/api/v1/stations/{MAC}")).await;
        st["events"].as_array()?.iter().find_map(|e| {
            let d = e["detail"].as_str()?;
            (e["kind"] == "script-withheld" && d.contains("127.91.0.5") && d.contains("127.0.0.9"))
                .then(|| d.to_owned())
        })
    })
    .await;
    assert!(
        detail.starts_with("restore token withheld: DHCP saw"),
        "{detail}"
    );
    server.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_calls_are_taken_from_the_restoring_address_only_and_end_with_the_restore() {
    let (server, _image, args, _dir) = marked().await;
    let addr = server.daemon.http_addr;
    let auth = format!("Authorization: Bearer {}\r\n", args["token"]);
    let json_path = format!("/api/v1/stations/{MAC}/station.json");
    let progress = format!("/api/v1/stations/{MAC}/restore-progress");
    let report = |state: &str| {
        format!(
            r#"{{"state": "{state}", "image": "{}", "done_bytes": 1, "total_bytes": 2}}"#,
            args["image"]
        )
    };
    let (station, student) = (Ipv4Addr::new(127, 91, 0, 5), Ipv4Addr::new(127, 0, 0, 9));
    // The first call with the token binds the restore to its address.
    let (status, _, _) = http_send_from(addr, station, "GET", &json_path, &auth, b"").await;
    assert_eq!(status, 200);
    // The token from anywhere else gets nothing and changes nothing.
    let (status, _, body) = http_send_from(addr, student, "GET", &json_path, &auth, b"").await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("runs from 127.91.0.5"));
    let (status, _, _) = http_send_from(
        addr,
        student,
        "POST",
        &progress,
        &json_header(&auth),
        report("done").as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let (_, st) = get_json(addr, &format!("/api/v1/stations/{MAC}")).await;
    assert_eq!(st["reset"]["state"], "pending", "{st}");
    // From the restoring address: done, and then the token has ended for station.json
    // (a repeated done, from a rerun killed after its report, is still fine).
    for _ in 0..2 {
        let (status, _, body) = http_send_from(
            addr,
            station,
            "POST",
            &progress,
            &json_header(&auth),
            report("done").as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (status, _, body) = http_send_from(addr, station, "GET", &json_path, &auth, b"").await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("ended"));
    server.daemon.shutdown().await.unwrap();
}

fn json_header(auth: &str) -> String {
    format!("{auth}Content-Type: application/json\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_served_as_a_summary_and_groups_by_id_and_bad_asks_are_refused() {
    let (server, _image, _args, _dir) = marked().await;
    let addr = server.daemon.http_addr;
    let index = images::Images::open(server.data.path())
        .unwrap()
        .get("lab")
        .unwrap();
    let id = index.id();
    let (status, body) = http_get_bytes(addr, &format!("/indexes/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        images::Summary::decode(&body, Some(&id)).unwrap(),
        index.summary()
    );
    let (status, body) =
        http_get_bytes(addr, &format!("/indexes/{id}/groups?first=0&count=1")).await;
    assert_eq!(status, 200);
    let want: Vec<u8> = index.ids.iter().flat_map(|i| i.0).collect();
    assert_eq!(body, want, "one group: every id of this small image");
    for (path, status, says) in [
        (
            format!("/indexes/{id}/groups?first=1&count=1"),
            400,
            "not one",
        ),
        (
            format!("/indexes/{id}/groups?first=0&count=0"),
            400,
            "1 to 64",
        ),
        (
            format!("/indexes/{id}/groups?first=0&count=65"),
            400,
            "1 to 64",
        ),
        (format!("/indexes/{id}/groups?first=x&count=1"), 400, ""),
        (
            format!("/indexes/{}", "0".repeat(64)),
            404,
            "no image has the index",
        ),
        (
            "/indexes/..%2F..%2Fetc%2Fpasswd".to_owned(),
            400,
            "not an index id",
        ),
    ] {
        let (got, text) = http_get(addr, &path).await;
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    server.daemon.shutdown().await.unwrap();
}
