//! The `netreset` binary as an admin runs it: check-config and serve with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NETRESET: &str = env!("CARGO_BIN_EXE_netreset");

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let root = dir.join("tftp");
    std::fs::create_dir_all(&root).unwrap();
    let path = dir.join("netreset.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dhcp]\nserver_ip = \"127.0.0.1\"\n\
             listen = \"127.0.0.1:0\"\npxe_listen = \"127.0.0.1:0\"\nbroadcast = \"127.0.0.1:9\"\n\
             [tftp]\nlisten = \"127.0.0.1:0\"\nroot = \"tftp\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "");
    let out = Command::new(NETRESET)
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = write_config(dir.path(), "[boot]\nlocal = \"reboot\"\n");
    let out = Command::new(NETRESET)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local") && err.contains("reboot"), "{err}");

    let out = Command::new(NETRESET)
        .arg("check-config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn serve_stops_cleanly_on_sigterm_and_keeps_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[inventory.stations]]\nmac = \"52:54:00:00:99:01\"\nname = \"pc1\"\n",
    );
    let mut child = serve(&config);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "netreset did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    // The store was flushed and closed: it opens again with the configured station.
    let store = orchestrator::store::Store::open(&dir.path().join("data/store"), 10).unwrap();
    let mac = "52:54:00:00:99:01".parse().unwrap();
    assert_eq!(
        store.station(mac).unwrap().unwrap().name.as_deref(),
        Some("pc1")
    );
}

/// Start `netreset serve` and wait for its "netreset running" line (no sleeps).
fn serve(config: &std::path::Path) -> std::process::Child {
    serve_with(
        Command::new(NETRESET)
            .args(["serve", "--config"])
            .arg(config),
    )
}

/// Start `command` (a `netreset serve`) and wait for its "netreset running" line.
fn serve_with(command: &mut Command) -> std::process::Child {
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lines
            .next()
            .expect("netreset exited before it was running")
            .unwrap();
        if line.contains("netreset running") {
            break;
        }
        assert!(Instant::now() < deadline, "netreset did not start");
    }
    // Keep reading: a closed pipe would make its next log line fail.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

#[test]
fn image_gc_beside_a_running_serve_is_refused_naming_the_holder_and_an_import_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut child = serve(&config);
    let out = netreset(&config, &["gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("is in use by netreset serve (pid {})", child.id())),
        "{err}"
    );
    let out = netreset(&config, &["ls"]);
    assert!(out.status.success(), "ls only reads: {out:?}");
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let out = netreset(&config, &["import", raw.to_str().unwrap(), "--name", "new"]);
    assert!(
        out.status.success(),
        "an import only adds, beside the server: {out:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = netreset(&config, &["gc"]);
    assert!(
        out.status.success(),
        "the lock went with the process: {out:?}"
    );
}

fn netreset(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(NETRESET)
        .arg("image")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn image_import_ls_verify_rm_and_gc_work_and_a_corrupt_chunk_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // 3 MiB: random-looking data, a zero MiB, data again.
    let mut disk = vec![0u8; 3 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, b) in disk.iter_mut().enumerate() {
        if !((1 << 20)..(2 << 20)).contains(&i) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    let raw = dir.path().join("golden.raw");
    std::fs::write(&raw, &disk).unwrap();

    let out = netreset(
        &config,
        &[
            "import",
            raw.to_str().unwrap(),
            "--name",
            "golden",
            "--chunk-size",
            "1048576",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 chunks (2 stored, 2 new; 1 zero, 0 free)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = netreset(
        &config,
        &["import", raw.to_str().unwrap(), "--name", "golden"],
    );
    assert!(
        !out.status.success(),
        "a second image of the same name is refused"
    );
    let out = netreset(
        &config,
        &["import", raw.to_str().unwrap(), "--name", "../evil"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an image name"));

    let out = netreset(&config, &["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .starts_with("golden\t3145728 bytes\t2.0 MiB used, 0 bytes free, 1.0 MiB zero; 1024 KiB chunks (2 distinct stored)"));
    let out = netreset(&config, &["verify", "golden"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Damage one stored chunk: verify names it and fails.
    let chunks = dir.path().join("data/chunks");
    let shard = std::fs::read_dir(&chunks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chunk = std::fs::read_dir(&shard)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&chunk, zstd_of(b"something else")).unwrap();
    let out = netreset(&config, &["verify", "golden"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match its id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(netreset(&config, &["rm", "golden"]).status.success());
    let out = netreset(&config, &["gc"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 2 chunks"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A valid zstd frame holding `data`, made by the store itself.
#[test]
fn an_image_that_is_not_generalized_is_flagged_at_import_shown_and_refused_for_kms_with_sysprep() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[kms]\nhost = \"kms.school.example\"\n");
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/tests/fixtures");
    for kind in ["generalized", "complete"] {
        let packed = std::fs::File::open(fixtures.join(format!("windows-{kind}.img.zst"))).unwrap();
        let raw = dir.path().join(format!("{kind}.raw"));
        std::fs::write(&raw, zstd::decode_all(packed).unwrap()).unwrap();
        let out = netreset(&config, &["import", raw.to_str().unwrap(), "--name", kind]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(
            err.contains("is not generalized"),
            kind == "complete",
            "{err}"
        );
    }
    let out = netreset(&config, &["show", "complete"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("partition  1: ntfs"), "{text}");
    assert!(
        text.contains("ImageState=IMAGE_STATE_COMPLETE (not generalized)"),
        "{text}"
    );
    let out = netreset(&config, &["show", "generalized", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["windows"]["generalized"], true, "{shown}");

    let out = netreset(&config, &["stage", "complete", "--profile", "kms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "staged a non-generalized image: {err}"
    );
    assert!(err.contains("image complete is not generalized"), "{err}");
    assert!(
        err.contains(r"C:\Windows\System32\Sysprep\sysprep.exe /generalize /oobe /shutdown"),
        "{err}"
    );
    // A plain reset of it is fine; the generalized one passes the KMS profile.
    let out = netreset(&config, &["stage", "complete", "--profile", "plain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = netreset(&config, &["stage", "generalized", "--profile", "kms"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn zstd_of(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = images::ChunkStore::open(dir.path()).unwrap();
    let (id, _) = store.put(data).unwrap();
    store.get_compressed(&id).unwrap()
}

#[test]
fn the_demo_runs_a_campaign_to_exactly_27_and_7_and_prints_one_json_line() {
    let out = Command::new(NETRESET)
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["state"], "done");
    assert_eq!(
        summary["targets"],
        serde_json::json!({"windows": 27, "office": 7})
    );
    assert_eq!(summary["reported_counts"], summary["targets"]);
    assert_eq!(summary["kms_host_counts"], summary["targets"]);
    assert_eq!(summary["cycles"], 27);
    assert_eq!(summary["distinct_stations"], 5);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
}

/// A port free on 127.0.0.1 just now, for TCP (`udp` false) or UDP.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A GET with a deadline: the status, or why there was none.
/// A daemon killed however the test ends, so that a failure leaves none behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_within(addr: std::net::SocketAddr, path: &str, within: Duration) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, within).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(within)).unwrap();
    stream.set_write_timeout(Some(within)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .map_err(|e| format!("{e}"))
}

#[test]
fn with_1100_idle_connections_held_open_health_scripts_and_tftp_answer_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (http, tftp) = (free_port(false), free_port(true));
    let config = write_config(
        dir.path(),
        "[[inventory.stations]]\nmac = \"52:54:00:00:99:02\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{http}\""),
            1,
        )
        .replace(
            "[tftp]\nlisten = \"127.0.0.1:0\"",
            &format!("[tftp]\nlisten = \"127.0.0.1:{tftp}\""),
        );
    std::fs::write(&config, text).unwrap();
    std::fs::write(dir.path().join("tftp/undionly.kpxe"), vec![7u8; 70_000]).unwrap();
    // As systemd starts a service without LimitNOFILE: 1024 open files (soft).
    // NETRESET_UNDER_TEST runs another build (an older one, to see this fail).
    let netreset = std::env::var("NETRESET_UNDER_TEST").unwrap_or_else(|_| NETRESET.to_owned());
    let child = serve_with(Command::new("bash").arg("-c").arg(format!(
        "ulimit -Sn 1024 && exec {netreset} serve --config {}",
        config.display()
    )));
    let mut child = KillOnDrop(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    // A laptop at 127.0.0.9 opens 1,100 connections and sends nothing, 100 at a
    // time with a pause between, so that the daemon takes each wave (all at once,
    // some would wait in the kernel's queues, which a daemon out of descriptors
    // never empties either, but the test would not see where it stands).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut held = Vec::new();
    for _ in 0..11 {
        held.extend(runtime.block_on(wave(addr, 100)));
        std::thread::sleep(Duration::from_millis(100));
    }
    async fn wave(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..n {
            connecting.spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket.bind("127.0.0.9:0".parse().unwrap()).ok()?;
                // A server out of descriptors stops accepting: the connect then hangs.
                tokio::time::timeout(Duration::from_secs(3), socket.connect(addr))
                    .await
                    .ok()?
                    .ok()
            });
        }
        let mut held = Vec::new();
        while let Some(joined) = connecting.join_next().await {
            held.extend(joined.unwrap());
        }
        held
    }
    assert!(
        held.len() >= 1000,
        "the laptop connected {} times",
        held.len()
    );
    // The connects completed in the kernel's backlog; wait until the daemon has
    // taken all it will (its open files stop changing), so that the requests below
    // do not slip in while it is still accepting.
    let pid = child.0.id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let (mut last, mut steady) = (fds(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while steady < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = fds();
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    // Everyone else is still served within a second.
    let second = Duration::from_secs(1);
    assert_eq!(get_within(addr, "/api/v1/health", second), Ok(200));
    assert_eq!(
        get_within(addr, "/boot/52:54:00:00:99:02.ipxe", second),
        Ok(200)
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(second)).unwrap();
    udp.send_to(b"\x00\x01undionly.kpxe\x00octet\x00", ("127.0.0.1", tftp))
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("TFTP answers within a second");
    assert_eq!(
        &buf[..2],
        &[0, 3],
        "DATA, not {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.0.wait();
}

#[test]
fn under_systemd_it_says_ready_once_serving_feeds_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let http = free_port(false);
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http}\""),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let socket_path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(NETRESET)
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1\n"), "{first:?}");
    // Ready means serving: health answers at once.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    assert_eq!(
        get_within(addr, "/api/v1/health", Duration::from_secs(1)),
        Ok(200)
    );
    let started = Instant::now();
    assert_eq!(next(), "WATCHDOG=1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fed at half of 400 ms"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let stopping = loop {
        let got = next();
        if got != "WATCHDOG=1" {
            break got;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn the_admin_cli_lists_sets_and_shows_stations_and_prints_the_servers_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port(false);
    let mac = "52:54:00:00:99:07";
    let token = "cli-test-admin-token-0123456789";
    let config = write_config(
        dir.path(),
        &format!("[api]\ntoken = \"{token}\"\n[[inventory.stations]]\nmac = \"{mac}\"\n"),
    );
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{http}\""),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let _daemon = KillOnDrop(serve(&config));
    let url = format!("http://127.0.0.1:{http}");
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(NETRESET)
            .args(args)
            .env_remove("NETRESET_URL")
            .env_remove("NETRESET_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let flags = ["--url", url.as_str(), "--token", token];
    // Server and token from flags; a table with the station.
    let (ok, out, err) = cli(&[&["station", "ls"][..], &flags].concat(), &[]);
    assert!(ok && out.contains(mac), "{out}{err}");
    // From the environment.
    let env = [("NETRESET_URL", url.as_str()), ("NETRESET_TOKEN", token)];
    let (ok, out, err) = cli(
        &[
            "station",
            "set",
            mac,
            "--room",
            "lab",
            "--name",
            "pc7",
            "--secure-boot",
            "true",
        ],
        &env,
    );
    assert!(ok && out.contains("set"), "{out}{err}");
    // From the configuration file alone; --json prints the server's JSON.
    let config_flag = ["--config", config.to_str().unwrap()];
    let (ok, out, err) = cli(
        &[&["station", "show", mac, "--json"][..], &config_flag].concat(),
        &[],
    );
    assert!(ok, "{out}{err}");
    let shown: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let st = if shown["station"].is_object() {
        &shown["station"]
    } else {
        &shown
    };
    assert_eq!(
        (st["room"].as_str(), st["name"].as_str()),
        (Some("lab"), Some("pc7")),
        "{shown}"
    );
    assert_eq!(
        (&st["secure_boot"], &shown["boot_loader"]),
        (&serde_json::json!(true), &serde_json::json!("signed")),
        "{shown}"
    );
    // The server's refusals, with its message and a failing exit status.
    let (ok, _, err) = cli(
        &[
            "station",
            "ls",
            "--url",
            &url,
            "--token",
            "wrong-token-0123456789",
        ],
        &[],
    );
    assert!(
        !ok && err.contains("401") && err.contains("wrong admin token"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &[&["station", "command", mac, "format"][..], &flags].concat(),
        &[],
    );
    assert!(
        !ok && err.contains("400") && err.contains("reboot"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &[&["campaign", "start", "--room", "lab"][..], &flags].concat(),
        &[],
    );
    assert!(!ok && err.contains("POST /api/v1/campaigns"), "{err}");
    let (ok, out, err) = cli(&[&["kms", "--json"][..], &flags].concat(), &[]);
    assert!(
        ok && serde_json::from_str::<serde_json::Value>(out.trim()).is_ok(),
        "{out}{err}"
    );
    let (ok, _, err) = cli(&["station", "ls", "--config", "/nonexistent.toml"], &[]);
    assert!(!ok && err.contains("--url"), "says what is missing: {err}");
    // The refused campaign left none behind.
    let (ok, out, err) = cli(&[&["campaign", "ls", "--json"][..], &flags].concat(), &[]);
    assert!(ok && out.trim() == "[]", "{out}{err}");
}

#[test]
fn campaign_watch_follows_the_demos_campaign_live_to_27_and_7_and_the_demo_serves_until_sigterm() {
    let mut demo = Command::new(NETRESET)
        .args(["demo", "--serve", "--windows-boot-ms", "400"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(demo.stderr.take().unwrap());
    let mut demo = KillOnDrop(demo);
    // "  dashboard: http://127.0.0.1:PORT/#token=TOKEN"
    let mut lines = stderr.lines();
    let dashboard = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("dashboard: ")
                .map(|(_, u)| u.trim().to_owned())
        })
        .expect("the demo prints the dashboard's URL");
    let (url, token) = dashboard.split_once("/#token=").unwrap();
    // The rest of its stderr is read (it must never block on a full pipe) and sent here.
    let (said, hear) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let cli = |args: &[&str]| {
        Command::new(NETRESET)
            .args(args)
            .args(["--json", "--url", url, "--token", token])
            .output()
            .unwrap()
    };
    // The demo starts its campaign right after it prints the URL.
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let ls: serde_json::Value =
            serde_json::from_slice(&cli(&["campaign", "ls"]).stdout).unwrap_or_default();
        if let Some(id) = ls[0]["id"].as_u64() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "the demo started no campaign");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = cli(&["campaign", "watch", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "done");
    assert_eq!(last["families"]["windows"]["reported"], 27);
    assert_eq!(last["families"]["office"]["reported"], 7);
    // Live: the counts were seen rising, not only the end.
    let windows: Vec<u64> = seen
        .iter()
        .map(|c| c["families"]["windows"]["reported"].as_u64().unwrap())
        .collect();
    assert!(
        windows.windows(2).all(|w| w[0] <= w[1]) && windows.iter().any(|&n| 0 < n && n < 27),
        "{windows:?}"
    );
    // The campaign is over, the demo says so and still serves its dashboard.
    let stays_up = std::iter::from_fn(|| hear.recv_timeout(Duration::from_secs(20)).ok())
        .any(|l| l.contains("the dashboard stays up"));
    assert!(stays_up, "the demo said it keeps serving");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    assert_eq!(get_within(addr, "/", Duration::from_secs(5)), Ok(200));
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on our own child's pid, which has not been waited for.
    unsafe {
        libc::kill(demo.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}
