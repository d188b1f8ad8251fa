//! `netreset station|campaign|kms`: the admin API from a shell. The server and the
//! admin token come from `--url`/`--token`, else `NETRESET_URL`/`NETRESET_TOKEN`,
//! else the configuration file (`http.public_url` or `http.listen`; `api.token` or
//! its token file). `--json` prints the server's answer as it is; otherwise a short
//! text. An error prints the server's message and exits non-zero.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::Config;

/// Where the API is and how to get in.
#[derive(Args)]
pub struct Connection {
    /// The server's base URL, e.g. http://10.0.0.1:8080.
    #[arg(long, env = "NETRESET_URL", global = true)]
    url: Option<String>,
    /// The admin token.
    #[arg(long, env = "NETRESET_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Configuration file, for what --url and --token do not say.
    #[arg(
        long,
        short,
        default_value = "/etc/netreset/netreset.toml",
        global = true
    )]
    config: PathBuf,
    /// Print the server's JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum StationCommand {
    /// Every station the server knows.
    Ls,
    /// One station, with its recent boot and agent events.
    Show { mac: String },
    /// Change a station's settings (the ones given; the rest stay).
    Set {
        mac: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        image: Option<String>,
        /// The station's disk: a device path or serial:SERIAL.
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        kms_activation: Option<bool>,
        /// Boot the signed path (shim, GRUB) for Secure Boot: true or false.
        #[arg(long)]
        secure_boot: Option<bool>,
    },
    /// Reset a station at its next network boot.
    Reset {
        mac: String,
        /// The image (default: the station's own).
        #[arg(long)]
        image: Option<String>,
        /// `plain` or `kms`.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Cancel a station's pending reset.
    Cancel { mac: String },
    /// Capture a station's disk into a new image at its next network boot (the
    /// disk is only read; only the chunks the store lacks are uploaded).
    Capture {
        mac: String,
        /// The new image's name.
        #[arg(long, required_unless_present = "cancel")]
        name: Option<String>,
        /// Bytes per chunk (a power of two, 64 KiB to 16 MiB; default 64 KiB).
        #[arg(long)]
        chunk_size: Option<u64>,
        /// Cancel the station's capture instead.
        #[arg(long, conflicts_with_all = ["chunk_size", "name"])]
        cancel: bool,
    },
    /// Queue `reboot` or `shutdown` for the station's agent.
    Command {
        mac: String,
        command: String,
        /// Even with a user logged on (who is warned a minute ahead).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum CampaignCommand {
    /// Start a KMS campaign on a room or a list of stations.
    Start {
        #[arg(long, conflicts_with = "stations")]
        room: Option<String>,
        /// Comma-separated MACs.
        #[arg(long, value_delimiter = ',')]
        stations: Option<Vec<String>>,
        /// Comma-separated: windows, office.
        #[arg(long, value_delimiter = ',', default_value = "windows,office")]
        families: Vec<String>,
        /// `now`, or `window` (the next overnight window).
        #[arg(long, default_value = "now")]
        start: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        margin: Option<u32>,
    },
    /// Every campaign.
    Ls,
    /// One campaign.
    Show { id: u64 },
    /// Cancel a campaign.
    Cancel { id: u64 },
    /// Follow a campaign until it ends: a line per family, redrawn each second.
    Watch { id: u64 },
}

/// The API, from `conn`.
struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(conn: &Connection) -> anyhow::Result<Api> {
        let config = || {
            Config::load(&conn.config).with_context(|| {
                "no --url/--token (or NETRESET_URL/NETRESET_TOKEN), so the configuration is needed"
            })
        };
        let base = match &conn.url {
            Some(url) => url.clone(),
            None => {
                let c = config()?;
                c.public_url.clone().unwrap_or_else(|| {
                    let mut listen = c.http_listen;
                    if listen.ip().is_unspecified() {
                        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    format!("http://{listen}")
                })
            }
        };
        let token = match &conn.token {
            Some(t) => t.clone(),
            None => match config()?.api {
                crate::config::ApiConfig::Token(t) => t,
                crate::config::ApiConfig::File(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the admin token {}", path.display()))?
                    .trim()
                    .to_owned(),
            },
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    /// The live event stream, from after `last_id` if given.
    fn events(&self, last_id: Option<&str>) -> anyhow::Result<impl std::io::Read> {
        let url = format!("{}/api/v1/events", self.base);
        // No overall timeout: the stream runs as long as the campaign. The server
        // sends a keep-alive every 15 s, so a read that waits 45 s means it is gone.
        let mut request = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(45))
            .build()
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "text/event-stream");
        if let Some(id) = last_id {
            request = request.set("Last-Event-ID", id);
        }
        match request.call() {
            Ok(r) => Ok(r.into_reader()),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let why = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                bail!("GET /api/v1/events: {status}: {}", why.trim())
            }
            Err(e) => bail!("GET {url}: {e}"),
        }
    }

    /// `method path` with `body`; the answer's JSON (null for an empty one), or the
    /// server's error message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token));
        let answer = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        let (status, text) = match answer {
            Ok(r) => (r.status(), r.into_string()?),
            Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap_or_default()),
            Err(e) => bail!("{method} {url}: {e}"),
        };
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{method} {url}: not JSON: {text:.200}"))?
        };
        if status >= 400 {
            let why = value["error"].as_str().unwrap_or(text.trim());
            bail!("{method} {path}: {status}: {why}");
        }
        Ok(value)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print(json: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!("{value}");
    } else {
        human(value);
    }
}

pub fn station(conn: &Connection, command: StationCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let path = |mac: &str| format!("/api/v1/stations/{mac}");
    match command {
        StationCommand::Ls => {
            let all = api.call("GET", "/api/v1/stations", None)?;
            print(conn.json, &all, |all| {
                println!(
                    "{:<17}  {:<12}  {:<8}  {:<15}  {:<10}  {:<4}  LAST SEEN",
                    "MAC", "NAME", "ROOM", "IP", "IMAGE", "KMS"
                );
                for s in all.as_array().into_iter().flatten() {
                    println!(
                        "{:<17}  {:<12}  {:<8}  {:<15}  {:<10}  {:<4}  {}",
                        text(&s["mac"]),
                        text(&s["name"]),
                        text(&s["room"]),
                        text(&s["ip"]),
                        text(&s["image"]),
                        if s["kms_activation"] == true {
                            "yes"
                        } else {
                            "no"
                        },
                        text(&s["last_seen"])
                    );
                }
            });
        }
        StationCommand::Show { mac } => {
            let st = api.call("GET", &path(&mac), None)?;
            print(conn.json, &st, |st| {
                let s = if st["station"].is_object() {
                    &st["station"]
                } else {
                    st
                };
                for key in [
                    "mac",
                    "name",
                    "room",
                    "ip",
                    "firmware",
                    "image",
                    "disk",
                    "kms_activation",
                    "boot_loader",
                    "confirmed",
                    "in_use",
                    "last_seen",
                    "last_report",
                ] {
                    println!("{key:<15} {}", text(&s[key]));
                }
                if !st["reset"].is_null() {
                    println!("{:<15} {}", "reset", st["reset"]);
                }
                if let Some(c) = st["capture"].as_object() {
                    println!(
                        "{:<15} {} {} ({}%) {}",
                        "capture",
                        text(&c["image"]),
                        text(&c["state"]),
                        text(&c["percent"]),
                        c.get("error").and_then(Value::as_str).unwrap_or("")
                    );
                }
                for e in st["events"].as_array().into_iter().flatten() {
                    println!(
                        "  {}  {:<16} {}",
                        text(&e["at"]),
                        text(&e["kind"]),
                        text(&e["detail"])
                    );
                }
            });
        }
        StationCommand::Set {
            mac,
            name,
            room,
            image,
            disk,
            kms_activation,
            secure_boot,
        } => {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("name", name),
                ("room", room),
                ("image", image),
                ("disk", disk),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v));
                }
            }
            for (key, flag) in [
                ("kms_activation", kms_activation),
                ("secure_boot", secure_boot),
            ] {
                if let Some(f) = flag {
                    body.insert(key.into(), json!(f));
                }
            }
            if body.is_empty() {
                bail!("nothing to set: give --name, --room, --image, --disk, --kms-activation or --secure-boot");
            }
            let answer = api.call("PUT", &path(&mac), Some(&Value::Object(body)))?;
            print(conn.json, &answer, |_| println!("{mac}: set"));
        }
        StationCommand::Reset {
            mac,
            image,
            profile,
        } => {
            let mut body = json!({});
            if let Some(i) = image {
                body["image"] = json!(i);
            }
            if let Some(p) = profile {
                body["profile"] = json!(p);
            }
            let answer = api.call("POST", &format!("{}/reset", path(&mac)), Some(&body))?;
            print(conn.json, &answer, |a| {
                println!(
                    "{mac}: reset to {} at its next network boot",
                    text(&a["image"])
                );
            });
        }
        StationCommand::Cancel { mac } => {
            let answer = api.call("DELETE", &format!("{}/reset", path(&mac)), None)?;
            print(conn.json, &answer, |_| println!("{mac}: reset cancelled"));
        }
        StationCommand::Capture {
            mac, cancel: true, ..
        } => {
            let answer = api.call("DELETE", &format!("{}/capture", path(&mac)), None)?;
            print(conn.json, &answer, |_| println!("{mac}: capture cancelled"));
        }
        StationCommand::Capture {
            mac,
            name,
            chunk_size,
            cancel: false,
        } => {
            let mut body = json!({ "name": name.unwrap_or_default() });
            if let Some(cs) = chunk_size {
                body["chunk_size"] = json!(cs);
            }
            let answer = api.call("POST", &format!("{}/capture", path(&mac)), Some(&body))?;
            print(conn.json, &answer, |a| {
                println!(
                    "{mac}: its disk {} is captured into image {} at its next network boot \
                     (netreset station show {mac} follows it)",
                    text(&a["disk"]),
                    text(&a["image"])
                );
            });
        }
        StationCommand::Command {
            mac,
            command,
            force,
        } => {
            let body = json!({ "command": command, "force": force });
            let answer = api.call("POST", &format!("{}/command", path(&mac)), Some(&body))?;
            print(conn.json, &answer, |a| {
                println!("{mac}: {command} queued (id {})", text(&a["id"]));
            });
        }
    }
    Ok(())
}

/// One line per family of a campaign: `windows  ######----  20/27 (+3 in flight)`.
fn campaign_lines(c: &Value) -> Vec<String> {
    let mut lines = vec![format!(
        "campaign {}: {}{}",
        text(&c["id"]),
        text(&c["state"]),
        c["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )];
    for (family, f) in c["families"].as_object().into_iter().flatten() {
        let (reported, target) = (
            f["reported"].as_u64().unwrap_or(0),
            f["target"].as_u64().unwrap_or(0).max(1),
        );
        let filled = (reported.min(target) * 30 / target) as usize;
        lines.push(format!(
            "  {family:<8} [{}{}] {reported}/{target} (+{} in flight)",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            f["in_flight"].as_u64().unwrap_or(0)
        ));
    }
    lines
}

pub fn campaign(conn: &Connection, command: CampaignCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match command {
        CampaignCommand::Start {
            room,
            stations,
            families,
            start,
            image,
            margin,
        } => {
            let mut body = json!({ "families": families, "start": start });
            for (key, value) in [
                ("room", room.map(Value::from)),
                ("image", image.map(Value::from)),
                ("margin", margin.map(Value::from)),
                ("stations", stations.map(Value::from)),
            ] {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            let answer = api.call("POST", "/api/v1/campaigns", Some(&body))?;
            print(conn.json, &answer, |a| {
                println!("campaign {} started", text(&a["id"]))
            });
        }
        CampaignCommand::Ls => {
            let all = api.call("GET", "/api/v1/campaigns", None)?;
            print(conn.json, &all, |all| {
                for c in all.as_array().into_iter().flatten() {
                    println!("{}", campaign_lines(c).join("\n"));
                }
            });
        }
        CampaignCommand::Show { id } => {
            let c = api.call("GET", &format!("/api/v1/campaigns/{id}"), None)?;
            print(conn.json, &c, |c| {
                println!("{}", campaign_lines(c).join("\n"));
                for s in c["stations"].as_array().into_iter().flatten() {
                    println!(
                        "  {}  {:<12} cycles {}",
                        text(&s["mac"]),
                        text(&s["phase"]),
                        text(&s["cycles_done"])
                    );
                }
            });
        }
        CampaignCommand::Cancel { id } => {
            let answer = api.call("DELETE", &format!("/api/v1/campaigns/{id}"), None)?;
            print(conn.json, &answer, |_| {
                println!("campaign {id}: cancelling")
            });
        }
        CampaignCommand::Watch { id } => return watch(&api, conn.json, id),
    }
    Ok(())
}

/// `campaign watch`: the campaign as it is, then every change of it from the live
/// events (`GET /api/v1/events`), until it ends; the exit status says how. A dropped
/// stream is taken up again where it stopped (`Last-Event-ID`).
fn watch(api: &Api, json: bool, id: u64) -> anyhow::Result<()> {
    let path = format!("/api/v1/campaigns/{id}");
    let mut last_shown = String::new();
    let mut show = |c: &Value| -> Option<anyhow::Result<()>> {
        let shown = if json {
            c.to_string()
        } else {
            campaign_lines(c).join("\n")
        };
        if shown != last_shown {
            println!("{shown}");
            last_shown = shown;
        }
        match c["state"].as_str() {
            Some("running") => None,
            Some("done") => Some(Ok(())),
            _ => Some(Err(anyhow::anyhow!(
                "campaign {id} ended {}",
                text(&c["state"])
            ))),
        }
    };
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        // Subscribed first, then the campaign read: no change falls in between.
        let stream = api.events(last_id.as_deref());
        if let Some(end) = show(&api.call("GET", &path, None)?) {
            return end;
        }
        let reader = match stream {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) if failures < 10 => {
                failures += 1;
                eprintln!("netreset: live events: {e:#}; again in {failures} s");
                std::thread::sleep(Duration::from_secs(failures));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut event = String::new();
        let mut data = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(reader)) {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("id:") {
                last_id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() {
                let (kind, body) = (std::mem::take(&mut event), std::mem::take(&mut data));
                let campaign = match kind.as_str() {
                    "campaign" => serde_json::from_str::<Value>(&body).ok(),
                    // Events were missed: read the campaign again.
                    "lagged" => Some(api.call("GET", &path, None)?),
                    _ => None,
                };
                if let Some(c) = campaign.filter(|c| c["id"].as_u64() == Some(id)) {
                    if let Some(end) = show(&c) {
                        return end;
                    }
                }
            }
        }
        // The stream ended (the server restarted, a proxy timed out): take it up again.
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn kms(conn: &Connection) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    let k = api.call("GET", "/api/v1/kms", None)?;
    print(conn.json, &k, |k| {
        for (family, f) in k["families"].as_object().into_iter().flatten() {
            println!(
                "{family:<8} reported {} of target {}, {} CMIDs known, below target from {}",
                text(&f["reported"]),
                text(&f["target"]),
                text(&f["known_cmids"]),
                text(&f["below_target_from"])
            );
        }
        let top_up = &k["next_top_up"];
        match top_up["window_opens"].as_str() {
            Some(opens) => println!(
                "next top-up: {} in the window opening {opens}{}",
                text(&top_up["families"]),
                top_up["campaign"]
                    .as_u64()
                    .map(|id| format!(" (campaign {id})"))
                    .unwrap_or_default()
            ),
            None => println!("next top-up: none planned"),
        }
        println!("{} reports in the ledger", text(&k["reports"]));
    });
    Ok(())
}
