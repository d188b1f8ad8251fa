//! The checks of single values and sections: each names the key and the value it
//! rejects ([`ConfigError::Invalid`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::raw::{RawCampaigns, RawHttp, RawKms, RawRestore, RawSchedule};
use super::{invalid, ConfigError, KmsConfig, RestoreConfig};

/// Whether `disk` names a disk for the restore environment: the kernel's name
/// (`/dev/` and then letters, digits and `/_.:-`, as in `/dev/nvme0n1`; not a udev
/// link), or `serial:` and the disk's serial number (letters, digits, `_.-`), which
/// stays the same when a PC with two disks names them the other way round.
pub fn check_disk(key: &str, disk: &str) -> Result<(), ConfigError> {
    if let Some(serial) = disk.strip_prefix("serial:") {
        let ok = (1..=64).contains(&serial.len())
            && serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        return if ok {
            Ok(())
        } else {
            Err(invalid(
                key,
                disk,
                "serial: and the disk's serial number (letters, digits, _.-)",
            ))
        };
    }
    if disk.starts_with("/dev/disk/") {
        return Err(invalid(
            key,
            disk,
            "the restore environment has no udev, so /dev/disk/ links do not exist there; use the kernel's name (/dev/nvme0n1) or serial:NUMBER",
        ));
    }
    let ok = disk.len() <= 128
        && disk.strip_prefix("/dev/").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_.:-".contains(&b))
                && !rest
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            disk,
            "a device path such as /dev/nvme0n1 or /dev/sda, or serial:NUMBER",
        ))
    }
}

pub(super) fn kms(raw: RawKms) -> Result<KmsConfig, ConfigError> {
    let host = raw.host.ok_or_else(|| {
        invalid(
            "kms.host",
            "",
            "the KMS host's name or address is required in [kms]",
        )
    })?;
    images::check_kms_host(&host).map_err(|why| invalid("kms.host", &host, why))?;
    let port = raw.port.unwrap_or(1688);
    if port == 0 {
        return Err(invalid(
            "kms.port",
            "0",
            "must be a TCP port (KMS listens on 1688)",
        ));
    }
    let families = raw
        .families
        .unwrap_or_else(|| vec!["windows".into(), "office".into()]);
    let (mut windows, mut office) = (false, false);
    for f in &families {
        match f.as_str() {
            "windows" => windows = true,
            "office" => office = true,
            other => {
                return Err(invalid(
                    "kms.families",
                    other,
                    "expected \"windows\" and/or \"office\"",
                ))
            }
        }
    }
    if !windows && !office {
        return Err(invalid(
            "kms.families",
            "[]",
            "name at least one of windows, office",
        ));
    }
    Ok(KmsConfig {
        host,
        port,
        windows,
        office,
    })
}

pub(super) fn schedule(
    raw: RawSchedule,
) -> Result<Option<crate::engine::schedule::Schedule>, ConfigError> {
    use crate::engine::schedule::{day, time_of_day, Holiday, Schedule, Window, WEEKDAYS};
    let zone = raw.time_zone.unwrap_or_else(|| "UTC".into());
    let time_zone = jiff::tz::TimeZone::get(&zone).map_err(|_| {
        invalid(
            "schedule.time_zone",
            &zone,
            "an IANA time zone name, such as Europe/Berlin",
        )
    })?;
    let mut windows = Vec::new();
    for (i, w) in raw.windows.into_iter().enumerate() {
        let key = |k: &str| format!("schedule.windows[{i}].{k}");
        let mut days = [false; 7];
        for d in &w.days {
            let n = day(d)
                .ok_or_else(|| invalid(key("days"), d, "mon, tue, wed, thu, fri, sat or sun"))?;
            days[n] = true;
        }
        if w.days.is_empty() {
            return Err(invalid(key("days"), "[]", "name at least one day"));
        }
        let start = time_of_day(&w.start)
            .ok_or_else(|| invalid(key("start"), &w.start, "a time of day, HH:MM"))?;
        let end = time_of_day(&w.end)
            .ok_or_else(|| invalid(key("end"), &w.end, "a time of day, HH:MM"))?;
        windows.push(Window { days, start, end });
    }
    let school_days = match raw.school_days {
        None => WEEKDAYS,
        Some(names) => {
            let mut days = [false; 7];
            for d in &names {
                let n = day(d).ok_or_else(|| {
                    invalid(
                        "schedule.school_days",
                        d,
                        "mon, tue, wed, thu, fri, sat or sun",
                    )
                })?;
                days[n] = true;
            }
            days
        }
    };
    let mut holidays = Vec::new();
    for (i, h) in raw.holidays.into_iter().enumerate() {
        let key = |k: &str| format!("schedule.holidays[{i}].{k}");
        let date = |k: &str, text: &str| {
            text.parse::<jiff::civil::Date>()
                .ok()
                .filter(|_| text.len() == 10)
                .ok_or_else(|| invalid(key(k), text, "a date, YYYY-MM-DD"))
        };
        let (from, to) = (date("from", &h.from)?, date("to", &h.to)?);
        if to < from {
            return Err(invalid(
                key("to"),
                &h.to,
                format!("a date on or after from ({})", h.from),
            ));
        }
        holidays.push(Holiday {
            name: h.name,
            from,
            to,
        });
    }
    Ok((!windows.is_empty()).then_some(Schedule {
        time_zone,
        windows,
        school_days,
        holidays,
    }))
}

pub(super) fn campaigns(
    raw: RawCampaigns,
) -> Result<crate::engine::campaign::Settings, ConfigError> {
    let defaults = crate::engine::campaign::Settings::default();
    let duration = |key: &str, value: Option<String>, default: std::time::Duration| {
        let Some(text) = value else {
            return Ok(default);
        };
        crate::clock::parse_duration(&text)
            .filter(|d| {
                *d >= std::time::Duration::from_millis(100)
                    && *d <= std::time::Duration::from_secs(86_400)
            })
            .ok_or_else(|| invalid(key, &text, "a duration between 100ms and 24h, such as 5m"))
    };
    let secs = |d: std::time::Duration| d.as_secs().max(1);
    let max_parallel = raw.max_parallel.unwrap_or(defaults.max_parallel);
    if !(1..=500).contains(&max_parallel) {
        return Err(invalid(
            "campaigns.max_parallel",
            max_parallel.to_string(),
            "between 1 and 500",
        ));
    }
    let attempts = |key: &str, v: Option<u32>, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=20).contains(&n) => Ok(n),
        Some(n) => Err(invalid(key, n.to_string(), "between 1 and 20")),
    };
    let d = &defaults.limits;
    Ok(crate::engine::campaign::Settings {
        max_parallel,
        limits: crate::engine::campaign::Limits {
            wake_s: secs(duration(
                "campaigns.wake_timeout",
                raw.wake_timeout,
                std::time::Duration::from_secs(d.wake_s),
            )?),
            wake_attempts: attempts(
                "campaigns.wake_attempts",
                raw.wake_attempts,
                d.wake_attempts,
            )?,
            restore_s: secs(duration(
                "campaigns.restore_timeout",
                raw.restore_timeout,
                std::time::Duration::from_secs(d.restore_s),
            )?),
            restore_attempts: attempts(
                "campaigns.restore_attempts",
                raw.restore_attempts,
                d.restore_attempts,
            )?,
            report_s: secs(duration(
                "campaigns.report_timeout",
                raw.report_timeout,
                std::time::Duration::from_secs(d.report_s),
            )?),
        },
        tick: duration("campaigns.tick", raw.tick, defaults.tick)?,
        keepalive_check: duration(
            "campaigns.keepalive_check",
            raw.keepalive_check,
            defaults.keepalive_check,
        )?,
    })
}

pub(super) fn restore(raw: RawRestore, dir: PathBuf) -> Result<RestoreConfig, ConfigError> {
    let location = |key: &str, value: Option<String>, default: &str| {
        let value = value.unwrap_or_else(|| default.into());
        let absolute = value.starts_with("http://") || value.starts_with("https://");
        let safe = !value.is_empty()
            && value.bytes().all(|b| b.is_ascii_graphic())
            && !value.contains("${")
            && !value.contains("||")
            && !value.contains("&&")
            && !value.contains('#');
        let relative_ok =
            !value.starts_with('/') && value.split('/').all(|c| !c.is_empty() && c != "..");
        if safe && (absolute || relative_ok) {
            Ok(value)
        } else {
            Err(invalid(
                key,
                &value,
                "a file name under restore.dir, or an http(s) URL, with no spaces",
            ))
        }
    };
    let kernel = location("restore.kernel", raw.kernel, "vmlinuz")?;
    let initrd = location("restore.initrd", raw.initrd, "initrd.img")?;
    let cmdline = raw.cmdline.unwrap_or_default();
    if cmdline.chars().any(char::is_control)
        || cmdline.contains("${")
        || cmdline.contains("||")
        || cmdline.contains("&&")
        || cmdline.contains('#')
        || cmdline.contains("netreset.")
    {
        return Err(invalid(
            "restore.cmdline",
            &cmdline,
            "extra kernel arguments without iPXE operators; netreset.* arguments are set by netreset",
        ));
    }
    let ttl_text = raw.token_ttl.unwrap_or_else(|| "4h".into());
    let token_ttl = crate::clock::parse_duration(&ttl_text)
        .filter(|d| {
            (std::time::Duration::from_secs(60)..=std::time::Duration::from_secs(7 * 86_400))
                .contains(d)
        })
        .ok_or_else(|| {
            invalid(
                "restore.token_ttl",
                &ttl_text,
                "a duration between 1m and 7d, such as 4h",
            )
        })?;
    if let Some(disk) = &raw.disk {
        check_disk("restore.disk", disk)?;
    }
    if let Some(mbit) = raw.max_mbit {
        if !(1..=100_000).contains(&mbit) {
            return Err(invalid(
                "restore.max_mbit",
                mbit.to_string(),
                "Mbit/s per restore, 1 to 100000",
            ));
        }
    }
    Ok(RestoreConfig {
        dir,
        kernel,
        initrd,
        cmdline,
        token_ttl,
        disk: raw.disk,
        max_mbit: raw.max_mbit,
        peers: raw.peers.unwrap_or(true),
        peer_port: match raw.peer_port {
            Some(0) => return Err(invalid("restore.peer_port", "0", "a TCP port, 1 to 65535")),
            Some(port) => port,
            None => images::peer::DEFAULT_PORT,
        },
    })
}

pub(super) fn addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, text, "expected address:port, such as 0.0.0.0:8080"))
}

pub(super) fn ipv4(key: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => {
            Ok(ip)
        }
        _ => Err(invalid(key, text, "expected the server's own IPv4 address")),
    }
}

pub(super) fn public_url(text: &str) -> Result<String, ConfigError> {
    let url = text.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !url.chars().any(|c| c.is_whitespace() || c.is_control())
                && !url.contains("${") =>
        {
            Ok(url.to_owned())
        }
        _ => Err(invalid(
            "http.public_url",
            text,
            "expected an http:// or https:// URL that stations can reach",
        )),
    }
}

pub(super) fn boot_name(key: &str, name: String) -> Result<String, ConfigError> {
    match pxe::tftp::check_name(&name) {
        Ok(_) => Ok(name),
        Err(why) => Err(invalid(
            key,
            name,
            format!("not a file name under tftp.root ({why})"),
        )),
    }
}

/// `[http]` limits: `max_connections` (default 4096: a fleet's agents each hold a
/// long poll), `max_per_client` (64), `header_timeout` (10s).
pub(super) fn http_limits(raw: &RawHttp) -> Result<crate::http::Limits, ConfigError> {
    let count = |key: &str, value: Option<usize>, default: usize, max: usize| match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(invalid(
            key,
            n.to_string(),
            format!("must be between 1 and {max}"),
        )),
    };
    let header_timeout = match &raw.header_timeout {
        None => std::time::Duration::from_secs(10),
        Some(text) => crate::clock::parse_duration(text)
            .filter(|d| {
                (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300))
                    .contains(d)
            })
            .ok_or_else(|| invalid("http.header_timeout", text, "a duration between 1s and 5m"))?,
    };
    Ok(crate::http::Limits {
        max_connections: count("http.max_connections", raw.max_connections, 4096, 1_000_000)?,
        max_per_client: count("http.max_per_client", raw.max_per_client, 64, 100_000)?,
        header_timeout,
    })
}
