//! Wiring: open the store, bind every server, run them under one cancellation token,
//! and shut down in order (servers drain with a deadline, the store is flushed last).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pxe::dhcp::{BootFiles, DhcpServer, DhcpSettings};
use pxe::tftp::{TftpServer, TftpSettings};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::boot::policy::{Orchestrator, RestoreBoot};
use crate::boot::tokens::Secret;
use crate::clock::Clock;
use crate::config::{Config, DhcpMode};
use crate::staging::StageSettings;
use crate::store::Store;

/// How long servers may take to finish what they are doing at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// A running daemon.
pub struct Daemon {
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// Where ProxyDHCP listens (port 67 socket, port 4011 socket), when enabled.
    pub dhcp_addrs: Option<(SocketAddr, SocketAddr)>,
    /// Where TFTP listens.
    pub tftp_addr: SocketAddr,
    /// The URL stations use to reach us.
    pub public_url: String,
    policy: Orchestrator,
    cancel: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    /// Cancelled when the campaign runner's thread has returned: a blocking thread
    /// cannot be aborted, so shutdown waits for it before the last flush.
    runner_stopped: CancellationToken,
    /// `data_dir` is ours while we run.
    _lock: crate::lock::DataLock,
}

impl Daemon {
    /// Open the store and bind every server; they run until [`Daemon::shutdown`].
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        Daemon::start_with_clock(config, Clock::system()).await
    }

    /// [`Daemon::start`] on another calendar clock (the simulator's).
    pub async fn start_with_clock(config: Config, clock: Clock) -> anyhow::Result<Daemon> {
        // Our address is needed for ProxyDHCP and to make the public URL; with DHCP off
        // and http.public_url set, nothing needs it.
        let own_ip = server_ip(&config);
        let need_ip = || own_ip.as_ref().map(|ip| *ip).map_err(|e| anyhow!("{e:#}"));
        // Bound first, so that an ephemeral port (tests) is known before the DHCP
        // server starts handing out script URLs that contain it.
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot listen on http.listen {}", config.http_listen))?;
        let http_addr = listener.local_addr()?;
        let public_url = config.public_url.clone().map(Ok).unwrap_or_else(|| {
            Ok::<_, anyhow::Error>(format!("http://{}:{}", need_ip()?, http_addr.port()))
        })?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let lock = crate::lock::DataLock::acquire(
            &config.data_dir,
            "netreset serve",
            crate::lock::Access::Shared,
        )?;
        let store = Store::open(
            &config.data_dir.join("store"),
            config.inventory.events_per_station,
        )
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?
        .with_max_unknown(config.inventory.max_unknown)
        .with_clock(clock);
        for st in &config.inventory.stations {
            store.configure(st.mac, &st.settings)?;
        }
        for (key, name) in [
            ("boot.bios", &config.boot.bios),
            ("boot.uefi_x64", &config.boot.uefi_x64),
        ] {
            if pxe::tftp::resolve(&config.tftp.root, name).is_err() {
                warn!(key, file = %name, root = %config.tftp.root.display(), "boot file missing under tftp.root");
            }
        }
        let secret = Secret::load_or_create(&config.data_dir)?;
        for missing in crate::service::resets::restore_env_missing(&config.restore) {
            warn!(file = %missing.display(), "restore environment file missing: resets are refused until it is there");
        }
        let restore = RestoreBoot {
            kernel: absolute(&public_url, &config.restore.kernel),
            initrd: absolute(&public_url, &config.restore.initrd),
            cmdline: config.restore.cmdline.clone(),
            server_url: public_url.clone(),
            token_ttl: config.restore.token_ttl,
            max_mbit: config.restore.max_mbit,
            peer_port: config.restore.peer_port,
            secret,
            files: crate::service::resets::restore_files(&config.restore),
        };
        let policy = Orchestrator::new(
            store,
            config.boot.clone(),
            config.rooms.clone(),
            config.inventory.clone(),
            restore,
        );
        let shared: Arc<dyn pxe::BootPolicy> = Arc::new(policy.clone());
        let (campaign_handle, campaign_rx) = crate::service::campaigns::Handle::new();
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let mut dhcp_stats = None;
        let dhcp_addrs = match config.dhcp.mode {
            DhcpMode::Off => None,
            DhcpMode::Proxy => {
                let settings = DhcpSettings {
                    listen: config.dhcp.listen,
                    pxe_listen: config.dhcp.pxe_listen,
                    interface: config.dhcp.interface.clone(),
                    server_ip: need_ip()?,
                    broadcast: config.dhcp.broadcast,
                    relays: config.dhcp.relays.clone(),
                    files: BootFiles {
                        bios: config.boot.bios.clone(),
                        uefi_x64: config.boot.uefi_x64.clone(),
                        uefi_arm64: config.boot.uefi_arm64.clone(),
                        uefi_x64_signed: Some(crate::boot::policy::TFTP_SHIM.to_owned()),
                        http_base: public_url.clone(),
                    },
                };
                let server = DhcpServer::bind(settings, shared).context(
                    "ProxyDHCP needs ports 67 and 4011: run as root or with CAP_NET_BIND_SERVICE and CAP_NET_RAW",
                )?;
                let addrs = server.local_addrs();
                dhcp_stats = Some(server.stats());
                let token = cancel.child_token();
                tasks.spawn(async move { ("dhcp", server.run(token).await.map_err(Into::into)) });
                Some(addrs)
            }
        };

        let mtu = config
            .tftp
            .mtu
            .or_else(|| config.dhcp.interface.as_deref().and_then(interface_mtu))
            .unwrap_or(1500);
        let tftp = TftpServer::bind(
            TftpSettings {
                listen: config.tftp.listen,
                root: config.tftp.root.clone(),
                mtu,
                max_per_client: config.tftp.max_per_client,
            },
            Arc::new(crate::service::boot::TftpPolicy {
                policy: policy.clone(),
                campaigns: campaign_handle.clone(),
            }),
        )
        .context("TFTP needs port 69: run as root or with CAP_NET_BIND_SERVICE")?;
        let tftp_addr = tftp.local_addr();
        let tftp_stats = tftp.stats();
        let token = cancel.child_token();
        tasks.spawn(async move { ("tftp", tftp.run(token).await.map_err(Into::into)) });

        let state = AppState {
            policy: policy.clone(),
            tftp_root: Arc::new(config.tftp.root.clone()),
            chunks: Arc::new(images::ChunkStore::open(&config.data_dir).with_context(|| {
                format!(
                    "cannot open the chunk store in {}",
                    config.data_dir.display()
                )
            })?),
            images: Arc::new(images::Images::open(&config.data_dir).with_context(|| {
                format!(
                    "cannot open the image catalog in {}",
                    config.data_dir.display()
                )
            })?),
            staging: Arc::new(StageSettings::from_config(&config)),
            restore: Arc::new(config.restore.clone()),
            commands_queued: Arc::new(tokio::sync::Notify::new()),
            admin: crate::boot::tokens::AdminToken::load(&config.api)?,
            campaigns: campaign_handle,
            campaign_settings: config.campaigns.clone(),
            rooms: Arc::new(config.rooms.clone()),
            schedule: Arc::new(config.schedule.clone()),
            started: Instant::now(),
            station_list: Arc::default(),
            metrics: Arc::new(crate::service::metrics::Metrics::new(
                dhcp_stats,
                Some(tftp_stats),
            )),
            events: Arc::new(crate::service::events::Hub::new(
                policy.store().clock().now_ms(),
            )),
        };
        let token = cancel.child_token();
        let runner = crate::runner::run(state.clone(), campaign_rx, token);
        // On a thread of its own: its store writes and staging block.
        let runtime = tokio::runtime::Handle::current();
        let runner_stopped = CancellationToken::new();
        let stopping = runner_stopped.clone().drop_guard();
        tasks.spawn_blocking(move || {
            let _stopped = stopping; // fires when the runner returns or panics
            runtime.block_on(runner);
            ("campaigns", Ok(()))
        });
        let token = cancel.child_token();
        let events = api::publish_events(state.clone(), token);
        tasks.spawn(async move {
            events.await;
            ("events", Ok(()))
        });
        let app = api::router(state);
        let token = cancel.child_token();
        let limits = config.http_limits;
        tasks.spawn(async move {
            let served = crate::http::serve(listener, app, limits, token).await;
            ("http", served.map_err(Into::into))
        });
        info!(%http_addr, %public_url, "netreset running");

        Ok(Daemon {
            http_addr,
            dhcp_addrs,
            tftp_addr,
            public_url,
            policy,
            cancel,
            tasks,
            runner_stopped,
            _lock: lock,
        })
    }

    /// The policy (and through it the store) of this daemon.
    pub fn policy(&self) -> &Orchestrator {
        &self.policy
    }

    /// Run until `stop` resolves or a server fails; then shut down.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = stop => {
                info!("shutting down");
                self.shutdown().await
            }
            Some(joined) = self.tasks.join_next() => {
                let failure = match joined {
                    Ok((name, Ok(()))) => anyhow!("{name} server stopped unexpectedly"),
                    Ok((name, Err(e))) => e.context(format!("{name} server failed")),
                    Err(e) => anyhow!("a server task panicked: {e}"),
                };
                let _ = self.shutdown().await;
                Err(failure)
            }
        }
    }

    /// Stop every server, wait for them (at most a few seconds), flush the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        // The runner stops before its next step (what it saved is carried out after a
        // restart); one under way, such as staging an image, is let finish.
        if tokio::time::timeout(RUNNER_DRAIN, self.runner_stopped.cancelled())
            .await
            .is_err()
        {
            warn!("the campaign runner did not stop within {RUNNER_DRAIN:?}");
        }
        let drained = tokio::time::timeout(DRAIN, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = joined {
                    warn!(server = name, error = %e, "server ended with an error");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("servers did not stop within {DRAIN:?}; aborting them");
            self.tasks.abort_all();
        }
        if !self.policy.drain_events(DRAIN) {
            warn!("boot events still queued at shutdown were not written");
        }
        self.policy.store().flush()?;
        Ok(())
    }
}

/// How long shutdown waits for the campaign runner to finish its current step.
const RUNNER_DRAIN: Duration = Duration::from_secs(60);

impl Drop for Daemon {
    /// A daemon dropped without [`Daemon::shutdown`] (a failed test, an early return)
    /// still stops its servers: their threads watch the token.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Our address as stations see it: `dhcp.server_ip`, else the interface's IPv4
/// address, else the specific address DHCP or HTTP listens on.
fn server_ip(config: &Config) -> anyhow::Result<Ipv4Addr> {
    if let Some(ip) = config.dhcp.server_ip {
        return Ok(ip);
    }
    if let Some(name) = &config.dhcp.interface {
        let addrs = if_addrs::get_if_addrs().context("cannot list network interfaces")?;
        if !addrs.iter().any(|a| &a.name == name) {
            bail!("dhcp.interface = {name:?}: no such interface on this machine");
        }
        return addrs
            .iter()
            .filter(|a| &a.name == name)
            .find_map(|a| match a.ip() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| {
                anyhow!("dhcp.interface = {name:?} has no IPv4 address; set dhcp.server_ip")
            });
    }
    for addr in [config.dhcp.listen, config.http_listen] {
        if let IpAddr::V4(v4) = addr.ip() {
            if !v4.is_unspecified() {
                return Ok(v4);
            }
        }
    }
    bail!("cannot tell our own address: set dhcp.server_ip or dhcp.interface")
}

fn interface_mtu(name: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `location` as a URL: itself when absolute, else our `/restore/` under `base`.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{}/restore/{location}", base.trim_end_matches('/'))
    }
}
