//! netreset-restore: reset a station's disk to a staged image, in place, fetching only
//! the chunks that differ from the orchestrator, then inject the staged files. Runs
//! in the restore environment; the iPXE script passes the same values on the kernel
//! command line (`netreset.server=` and so on). With `--capture`, the other way:
//! read the disk (never write it) into a new image on the orchestrator, uploading
//! only the chunks its store lacks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use images::client::{report_capture_failure, report_failure, run, run_capture, Options};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Reset a disk to a staged netreset image, fetching only what differs"
)]
struct Args {
    /// The orchestrator's URL, e.g. http://10.0.0.1:8080
    #[arg(long)]
    server: String,
    /// This station's MAC address (aa:bb:cc:dd:ee:ff)
    #[arg(long)]
    station: String,
    /// The per-restore token the orchestrator issued
    #[arg(long)]
    token: String,
    /// The staged image id (64 hex digits)
    #[arg(long, required_unless_present = "capture")]
    image: Option<String>,
    /// Capture the disk into the image the orchestrator was asked to make, instead
    /// of restoring it (the disk is opened read-only)
    #[arg(long, conflicts_with = "image")]
    capture: bool,
    /// The disk to reset: a block device (/dev/sda, /dev/nvme0n1) or an image file
    #[arg(long, required_unless_present = "report_failure")]
    disk: Option<PathBuf>,
    /// Restore nothing: report this station's restore as failed, with the text of
    /// FILE (the end of a log) as the reason, and exit
    #[arg(long, value_name = "FILE", conflicts_with = "disk")]
    report_failure: Option<PathBuf>,
    /// Print one JSON line with the figures at the end
    #[arg(long)]
    json: bool,
    /// Chunk fetches in flight at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Cap the bandwidth chunk fetches use, in Mbit/s
    #[arg(long, value_name = "MBIT")]
    max_mbit: Option<f64>,
    /// Serve chunks to the other stations of the restore's wave on this TCP port
    /// (the orchestrator passes netreset.peer_port= to a restore in a wave)
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    peer_port: Option<u16>,
    /// Keep retrying a failed request this many seconds (the server restarting)
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    retry_for: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        server: args.server,
        station: args.station,
        token: args.token,
        image: args.image.unwrap_or_default(),
        disk: args.disk.unwrap_or_default(),
        parallel: usize::from(args.parallel),
        max_mbit: args.max_mbit,
        retry_for: std::time::Duration::from_secs(args.retry_for),
        peer_listen: args
            .peer_port
            .map(|p| std::net::SocketAddr::from(([0, 0, 0, 0], p))),
    };
    if let Some(file) = &args.report_failure {
        let text = match std::fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(the failure log {} is unreadable: {e})", file.display()),
        };
        let reported = if args.capture {
            report_capture_failure(&opts, &text)
        } else {
            report_failure(&opts, &text)
        };
        return match reported {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netreset-restore: cannot report the failure: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let log = |line: &str| eprintln!("netreset-restore: {line}");
    let outcome = if args.capture {
        run_capture(&opts, &log).map(|o| serde_json::to_string(&o))
    } else {
        run(&opts, &log).map(|o| serde_json::to_string(&o))
    };
    match outcome {
        Ok(json) => {
            if args.json {
                println!("{}", json.expect("plain struct"));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netreset-restore: {e}");
            ExitCode::FAILURE
        }
    }
}
