//! The `netreset` command line: `serve`, `demo`, `check-config`, `image`, and the
//! admin API's client (`station`, `campaign`, `kms`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{Config, Daemon};
use tracing_subscriber::EnvFilter;

mod client;
pub mod demo;
mod image;
mod notify;

#[derive(Parser)]
#[command(
    name = "netreset",
    version,
    about = "Network reset and KMS activation for school lab PCs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: ProxyDHCP, TFTP and HTTP.
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/netreset/netreset.toml")]
        config: PathBuf,
    },
    /// Run a KMS campaign on a simulated school, on loopback: no root, no setup.
    Demo {
        /// Print the summary as one JSON line.
        #[arg(long)]
        json: bool,
        /// Milliseconds a simulated station takes to boot Windows and activate after
        /// each restore (real ones take minutes).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        windows_boot_ms: u64,
        /// End once the campaign is done (in a terminal the demo keeps serving the
        /// dashboard until Ctrl-C; --json ends at once too).
        #[arg(long, conflicts_with = "serve")]
        exit: bool,
        /// Keep serving the dashboard after the campaign until Ctrl-C or SIGTERM, also
        /// when not run in a terminal (for browser tests).
        #[arg(long)]
        serve: bool,
    },
    /// Validate a configuration file; names the bad key and value.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Disk images in the chunk store under data_dir.
    Image {
        /// Configuration file (for data_dir).
        #[arg(long, short, default_value = "/etc/netreset/netreset.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// Stations, through the admin API of a running server.
    Station {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::StationCommand,
    },
    /// KMS campaigns, through the admin API.
    Campaign {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        command: client::CampaignCommand,
    },
    /// The KMS counts, projection and next top-up, through the admin API.
    Kms {
        #[command(flatten)]
        conn: client::Connection,
    },
}

/// Parse the command line and run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws progress bars; the daemon's own log would break them up.
    let default_level = match cli.command {
        Command::Demo { .. }
        | Command::Station { .. }
        | Command::Campaign { .. }
        | Command::Kms { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo {
            json,
            windows_boot_ms,
            exit,
            serve,
        } => {
            use std::io::IsTerminal;
            let keep_serving = serve || (!exit && !json && std::io::stderr().is_terminal());
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(demo::run(
                        json,
                        std::time::Duration::from_millis(windows_boot_ms),
                        keep_serving,
                    ))
                })
        }
        Command::Serve { config } => serve(&config),
        Command::Image { config, command } => image::run(&config, command),
        Command::Station { conn, command } => client::station(&conn, command),
        Command::Campaign { conn, command } => client::campaign(&conn, command),
        Command::Kms { conn } => client::kms(&conn),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netreset: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!(
        "{}: ok (dhcp {:?}, tftp root {}, http {})",
        file.display(),
        config.dhcp.mode,
        config.tftp.root.display(),
        config.http_listen
    );
    Ok(())
}

fn serve(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // The handlers go in before the daemon says it is running: a SIGTERM right
        // after that line must stop it cleanly, not kill it.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let daemon = Daemon::start(config).await?;
        // Every server is bound: systemd may start what comes after us.
        let notifier = notify::Notifier::from_env().map(std::sync::Arc::new);
        if let Some(n) = &notifier {
            n.send("READY=1\nSTATUS=serving");
            if let Some(every) = notify::watchdog_interval() {
                tokio::spawn(feed_watchdog(
                    n.clone(),
                    daemon.policy().store().clone(),
                    every,
                ));
            }
        }
        // SIGTERM (systemd) or SIGINT (Ctrl-C).
        let stopping = notifier.clone();
        daemon
            .run_until(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if let Some(n) = stopping {
                    n.send("STOPPING=1");
                }
            })
            .await
    })
}

/// Feed systemd's watchdog every `every` while the store answers a read on the
/// blocking pool (the runtime, the pool and sled alive); a daemon stuck there is
/// restarted by systemd (`WatchdogSec` in the unit).
async fn feed_watchdog(
    notifier: std::sync::Arc<notify::Notifier>,
    store: crate::store::Store,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.mono_mark()).await {
            Ok(Ok(_)) => notifier.send("WATCHDOG=1"),
            Ok(Err(e)) => tracing::error!(error = %e, "watchdog: the store does not answer"),
            Err(e) => tracing::error!(error = %e, "watchdog: the blocking pool does not answer"),
        }
    }
}

/// Raise the soft limit of open files to the hard one: the default soft limit (1024)
/// is below what a fleet's long polls and a classroom's boot burst need, and at it
/// accept and open fail for everybody. The unit sets `LimitNOFILE`; this covers a
/// daemon started by hand.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    #[allow(unsafe_code)]
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            before == limit.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::info!(open_files = limit.rlim_cur, "open file limit");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open file limit");
    }
}

/// A token cancelled at SIGTERM or SIGINT (Ctrl-C), the handlers set now: a signal
/// that comes early is not lost (nor does it kill the process mid-way).
pub(crate) fn stop_token() -> std::io::Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = tokio_util::sync::CancellationToken::new();
    let stopped = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stopped.cancel();
    });
    Ok(token)
}
