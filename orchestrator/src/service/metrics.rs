//! Prometheus metrics (`GET /metrics`, OpenMetrics text): what the daemon counts as it
//! goes (HTTP requests, restores) and what a scrape reads at that moment (the
//! protocol servers' counts, campaigns, KMS counts and targets, the store's size).
//! Names and labels follow Prometheus' conventions (`_total`, `_bytes`, `_seconds`,
//! base units); `promtool check metrics` checks them in CI.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::{Error, Services};
use crate::engine::campaign::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The route template (`/api/v1/stations/{mac}`), `unmatched` for none.
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// The counts the daemon keeps as it goes, and the protocol servers' counts it reads.
#[derive(Debug)]
pub struct Metrics {
    http: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabel, Histogram>,
    restores: Family<OutcomeLabel, Counter>,
    restore_chunks: Family<SourceLabel, Counter>,
    restore_fetched: Counter,
    restore_peer_chunks: Counter,
    restore_seconds: Histogram,
    dhcp: Option<Arc<pxe::stats::DhcpStats>>,
    tftp: Option<Arc<pxe::stats::TftpStats>>,
}

impl Metrics {
    pub fn new(
        dhcp: Option<Arc<pxe::stats::DhcpStats>>,
        tftp: Option<Arc<pxe::stats::TftpStats>>,
    ) -> Metrics {
        Metrics {
            http: Family::default(),
            // 0.5 ms to about 16 s.
            http_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            restores: Family::default(),
            restore_chunks: Family::default(),
            restore_fetched: Counter::default(),
            restore_peer_chunks: Counter::default(),
            // 10 s to about 3 hours.
            restore_seconds: Histogram::new(exponential_buckets(10.0, 2.0, 11)),
            dhcp,
            tftp,
        }
    }

    /// An HTTP request answered: its route template, method, status and time.
    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// A restore began (its client's first report).
    pub fn restore_started(&self) {
        self.restores
            .get_or_create(&OutcomeLabel { outcome: "started" })
            .inc();
    }

    /// A restore ended; with its figures when it is done.
    pub fn restore_ended(&self, done: bool, stats: &serde_json::Map<String, serde_json::Value>) {
        let outcome = if done { "done" } else { "failed" };
        self.restores.get_or_create(&OutcomeLabel { outcome }).inc();
        if !done {
            return;
        }
        let n = |k: &str| {
            stats
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        self.restore_chunks
            .get_or_create(&SourceLabel { source: "fetched" })
            .inc_by(n("chunks_fetched"));
        self.restore_chunks
            .get_or_create(&SourceLabel { source: "in-place" })
            .inc_by(n("chunks_in_place"));
        self.restore_fetched.inc_by(n("bytes_fetched"));
        self.restore_peer_chunks.inc_by(n("chunks_from_peers"));
        if let Some(s) = stats.get("seconds").and_then(serde_json::Value::as_f64) {
            self.restore_seconds.observe(s);
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// A counter family read from counts kept elsewhere (the protocol servers').
fn counters(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, n) in values {
        family.get_or_create(&labels).inc_by(n);
    }
    registry.register(name, help, family);
}

/// The formats a scrape can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (curl, promtool, older scrapers).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn of_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the Prometheus text format: a counter's family is named with
/// its `_total` (its only sample here: no `_created` is written), and the `# UNIT` and
/// `# EOF` lines go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What a scrape shows, in `format`. Reads the store: run it off the async workers.
pub fn render(state: &Services, format: Format) -> Result<String, Error> {
    let m = &state.metrics;
    let mut registry = Registry::with_prefix("netreset");
    registry.register(
        "http_requests",
        "HTTP requests answered, by route template, method and status",
        m.http.clone(),
    );
    registry.register_with_unit(
        "http_request_duration",
        "Time to answer an HTTP request (to its first byte), by route template",
        Unit::Seconds,
        m.http_seconds.clone(),
    );
    registry.register(
        "restores",
        "Restores by outcome: started (the client's first report), done, failed",
        m.restores.clone(),
    );
    registry.register(
        "restore_chunks",
        "Chunks of completed restores: fetched (from the server, or in a wave from its other stations), or already in place on the disk",
        m.restore_chunks.clone(),
    );
    registry.register(
        "restore_peer_chunks",
        "Chunks of completed restores that came from other stations of their restore wave (counted among the fetched ones too)",
        m.restore_peer_chunks.clone(),
    );
    registry.register_with_unit(
        "restore_fetched",
        "Compressed bytes completed restores fetched",
        Unit::Bytes,
        m.restore_fetched.clone(),
    );
    registry.register_with_unit(
        "restore_duration",
        "Time a completed restore took, as its client measured it",
        Unit::Seconds,
        m.restore_seconds.clone(),
    );
    if let Some(dhcp) = &m.dhcp {
        let answers = dhcp
            .answers()
            .into_iter()
            .map(|(f, l, n)| (vec![("firmware", f), ("listener", l)], n));
        counters(
            &mut registry,
            "dhcp_answers",
            "ProxyDHCP answers sent, by firmware and listener (dhcp: port 67, pxe: port 4011)",
            answers,
        );
        let drops = dhcp
            .drops()
            .into_iter()
            .map(|(r, n)| (vec![("reason", r)], n));
        counters(
            &mut registry,
            "dhcp_dropped",
            "DHCP packets not answered, by reason",
            drops,
        );
    }
    if let Some(tftp) = &m.tftp {
        let transfers = tftp
            .transfers()
            .into_iter()
            .map(|(o, n)| (vec![("outcome", o)], n));
        counters(
            &mut registry,
            "tftp_transfers",
            "TFTP requests by outcome: done, failed, negotiated-only (the client asked for the size and ended), refused",
            transfers,
        );
        let bytes: Counter = Counter::default();
        bytes.inc_by(tftp.bytes());
        registry.register_with_unit(
            "tftp_sent",
            "File bytes sent in completed TFTP transfers",
            Unit::Bytes,
            bytes,
        );
    }
    let store = state.policy.store();
    let campaigns = store.campaigns()?;
    let cycles: Counter = Counter::default();
    cycles.inc_by(
        campaigns
            .iter()
            .flat_map(|r| &r.campaign.stations)
            .map(|s| u64::from(s.cycles_done))
            .sum(),
    );
    registry.register(
        "campaign_cycles",
        "Reset cycles campaigns completed",
        cycles,
    );
    let by_state = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for name in ["running", "done", "stopped", "cancelled"] {
        let _ = by_state.get_or_create(&vec![("state", name)]);
    }
    let phases = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for r in &campaigns {
        let state = super::views::CampaignView::new(r);
        let name = match state.state {
            super::views::CampaignState::Running => "running",
            super::views::CampaignState::Done => "done",
            super::views::CampaignState::Stopped => "stopped",
            super::views::CampaignState::Cancelled => "cancelled",
        };
        by_state.get_or_create(&vec![("state", name)]).inc();
        if r.campaign.state == State::Running {
            for s in state.stations {
                phases.get_or_create(&vec![("phase", s.phase)]).inc();
            }
        }
    }
    registry.register("campaigns", "Campaigns by state", by_state);
    registry.register(
        "campaign_stations",
        "Stations of running campaigns, by phase",
        phases,
    );
    let ledger = store.ledger()?;
    let reported = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    let target = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for family in [
        crate::engine::Family::Windows,
        crate::engine::Family::Office,
    ] {
        let labels = vec![("family", family.name())];
        reported
            .get_or_create(&labels)
            .set(i64::from(ledger.latest_count(family)));
        target
            .get_or_create(&labels)
            .set(i64::from(family.threshold() + super::kms::DEFAULT_MARGIN));
    }
    registry.register(
        "kms_reported",
        "The KMS host's count as stations last reported it, by family",
        reported,
    );
    registry.register(
        "kms_target",
        "The count netreset keeps the KMS host at (threshold + default margin), by family",
        target,
    );
    let size = Gauge::<i64>::default();
    size.set(i64::try_from(store.size_on_disk()?).unwrap_or(i64::MAX));
    registry.register_with_unit("store_size", "The store's size on disk", Unit::Bytes, size);
    let stations = Gauge::<i64>::default();
    stations.set(i64::try_from(store.station_count()).unwrap_or(i64::MAX));
    registry.register("stations", "Stations the inventory holds", stations);
    let subscribers = Gauge::<i64>::default();
    subscribers.set(i64::try_from(state.events.subscribers()).unwrap_or(i64::MAX));
    registry.register(
        "event_subscribers",
        "Clients listening to /api/v1/events",
        subscribers,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::Internal(format!("metrics: {e}")))?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::Text => prometheus_text(&text),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_text_names_counter_families_with_total_and_drops_unit_and_eof() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
                    # HELP a_size_bytes Size.\n# TYPE a_size_bytes gauge\n# UNIT a_size_bytes bytes\na_size_bytes 7\n# EOF\n";
        assert_eq!(
            super::prometheus_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
             # HELP a_size_bytes Size.\n# TYPE a_size_bytes gauge\na_size_bytes 7\n"
        );
    }

    #[test]
    fn a_scraper_that_asks_for_openmetrics_gets_it_and_others_get_the_text_format() {
        use super::Format;
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(Format::of_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::of_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::of_accept(None), Format::Text);
    }
}
