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
    let mut child = Command::new(NETRESET)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "netreset running" line rather than sleeping.
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
