//! The agents' side of the domain: whose token a request carries, their reports
//! (raw Software Protection events, parsed and paired by `engine::spp`, judged
//! here), their command polls and results, and the commands admins queue.

use pxe::MacAddr;
use serde::Deserialize;

use super::{Error, Services};
use crate::engine::campaign::Event;
use crate::engine::ledger::{Added, Report};
use crate::engine::spp::{self, Channel};
use crate::engine::{Family, COUNT_INSUFFICIENT};
use crate::store::Command;

/// At most this many events and licences in one report: the agent sends the newest
/// 200 events, and a PC has a few dozen licensed products at most.
const MAX_EVENTS: usize = 400;
const MAX_LICENSES: usize = 64;
/// A deployment has one CMID per family; a rearm (`slmgr /rearm`) makes a second.
/// More in one cycle are made up.
const MAX_CMIDS_PER_CYCLE: usize = 2;

/// Whose token it is: the station, the reset generation the token belongs to, and
/// the families that reset's agent was asked to activate.
pub struct Agent {
    pub mac: MacAddr,
    pub generation: u64,
    pub families: Vec<Family>,
}

/// Check the agent token of `station` (the `?station=` of the request, so that the
/// token is checked before the body is read): the one its current reset injected,
/// or, until that reset is done, the one of the image the station still runs.
pub fn authorize(state: &Services, station: &str, token: Option<&str>) -> Result<Agent, Error> {
    let mac = super::parse_mac(station)?;
    let token = token.ok_or_else(|| {
        Error::Unauthorized("the agent token is needed (Authorization: Bearer ...)".into())
    })?;
    let store = state.policy.store();
    let reset = store.reset(mac)?;
    let station = store.station(mac)?;
    let running = station.as_ref().and_then(|st| st.agent_generation);
    if reset.is_none() && running.is_none() {
        return Err(Error::Unauthorized(format!(
            "{mac} was never reset by netreset: it has no agent token"
        )));
    }
    let secret = &state.policy.restore().secret;
    let running_families = station
        .as_ref()
        .map_or(&[][..], |st| st.agent_families.as_slice());
    // The current reset's token, and the running image's (its previous reset's).
    let mut candidates: Vec<(u64, &[String])> = Vec::new();
    if let Some(r) = &reset {
        candidates.push((r.generation, r.families.as_slice()));
    }
    candidates.extend(
        reset
            .as_ref()
            .and_then(|r| r.agent_generations().nth(1))
            .into_iter()
            .chain(running)
            .filter(|g| reset.as_ref().is_none_or(|r| r.generation != *g))
            .map(|g| (g, running_families)),
    );
    let (generation, families) = candidates
        .into_iter()
        .find(|(g, _)| secret.check_agent_token(token, mac, *g))
        .ok_or_else(|| {
            Error::Unauthorized(format!("not the agent token of {mac}'s current reset"))
        })?;
    Ok(Agent {
        mac,
        generation,
        families: families
            .iter()
            .filter_map(|f| match f.as_str() {
                "windows" => Some(Family::Windows),
                "office" => Some(Family::Office),
                _ => None,
            })
            .collect(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// The station, if the body says (it must be the `?station=` of the request).
    #[serde(default)]
    pub station: Option<String>,
    #[serde(default)]
    interactive_user: bool,
    /// The Software Licensing products (`SoftwareLicensingProduct`), as the agent reads them.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    licenses: Vec<spp::License>,
    /// Raw event XML, oldest first.
    #[serde(default)]
    events: Vec<String>,
    /// Families whose activation the agent stopped retrying, with no reply.
    #[serde(default)]
    #[schema(value_type = Vec<super::views::FamilyName>)]
    gave_up: Vec<Family>,
}

/// The most a KMS host ever reports for `family`: its table holds twice the highest
/// threshold (docs/kms.md), 50 for Windows and 10 for Office.
fn count_cap(family: Family) -> u32 {
    match family {
        Family::Windows => 2 * Family::Windows.threshold(),
        Family::Office => 2 * Family::Office.threshold(),
    }
}

/// The result the campaign and the ledger keep for a reply: read the activated flag,
/// not only the HRESULT (a count too low can come back as 0x0 with the flag at 0).
fn outcome(reply: &spp::Reply) -> u32 {
    if reply.activated {
        0
    } else if reply.hresult != 0 {
        reply.hresult
    } else {
        COUNT_INSUFFICIENT
    }
}

/// The station a body names, when it names one, must be the token's.
fn same_station(agent: &Agent, station: Option<&str>) -> Result<(), Error> {
    match station.map(super::parse_mac).transpose()? {
        Some(mac) if mac != agent.mac => Err(Error::Invalid(format!(
            "the body is about {mac}, the request (?station=) about {}",
            agent.mac
        ))),
        _ => Ok(()),
    }
}

/// A report as far as it can be read without the store: its events parsed (those
/// that cannot be, with why) and paired with requests.
pub struct ReadReport {
    pub unreadable: Vec<Unreadable>,
    pub pairing: spp::Pairing,
}

/// Read `body`, from a station asked to activate `asked`: refuse too many events or
/// licences, a family given up that was not asked for, and counts above what a KMS
/// host reports. Pure: the fuzzer runs it on hostile bodies.
pub fn read_report(body: &ReportBody, asked: &[Family]) -> Result<ReadReport, Error> {
    if body.events.len() > MAX_EVENTS || body.licenses.len() > MAX_LICENSES {
        return Err(Error::Invalid(format!(
            "{} events and {} licences: at most {MAX_EVENTS} and {MAX_LICENSES}",
            body.events.len(),
            body.licenses.len()
        )));
    }
    // An event that cannot be read (a locale Windows formats oddly, a damaged log)
    // is left out and said; the others still count. Forged counts refuse the whole.
    let mut unreadable = Vec::new();
    let mut records = Vec::new();
    for (i, xml) in body.events.iter().enumerate() {
        match spp::parse(xml) {
            Ok(record) => records.push(record),
            Err(e) => unreadable.push(Unreadable {
                index: i,
                error: e.to_string(),
            }),
        }
    }
    if let Some(f) = body.gave_up.iter().find(|f| !asked.contains(f)) {
        return Err(Error::Invalid(format!(
            "gave_up names {f}, which this station was not asked to activate"
        )));
    }
    let pairing = spp::pair(&records, &body.licenses);
    for a in &pairing.attempts {
        if let Some(reply) = &a.reply {
            if reply.count > count_cap(a.family) {
                return Err(Error::Invalid(format!(
                    "{} count {} in event record {}: a KMS host reports {} at most",
                    a.family,
                    reply.count,
                    reply.record_id,
                    count_cap(a.family)
                )));
            }
        }
    }
    Ok(ReadReport {
        unreadable,
        pairing,
    })
}

/// Take a report of `agent` (whose token was checked before the body was read):
/// read it, refuse forged counts and made-up CMIDs before anything is stored,
/// record the answered requests in the ledger (new entries and renewals), and tell
/// the campaign what it needs. The answer says what was recorded, renewed, ignored
/// and unreadable.
/// An event of a report that could not be read, and why.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Unreadable {
    /// Its place in `events`.
    pub index: usize,
    pub error: String,
}

/// What became of a report.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReportAnswer {
    /// Activations new to the ledger.
    pub recorded: u32,
    /// Activations of CMIDs the ledger knew (the host counts them again).
    pub renewed: u32,
    /// A CMID came back after a reset: the image is not generalized.
    pub duplicate_cmid: bool,
    /// Requests that could not be paired with one reply.
    pub ambiguous: usize,
    /// Families with replies that belong to no cycle of this station.
    #[schema(value_type = Vec<super::views::FamilyName>)]
    pub ignored: Vec<Family>,
    pub unreadable: Vec<Unreadable>,
}

pub fn report(state: &Services, agent: &Agent, body: ReportBody) -> Result<ReportAnswer, Error> {
    same_station(agent, body.station.as_deref())?;
    let mac = agent.mac;
    // Everything is checked before anything is stored: a bad report changes nothing.
    let ReadReport {
        unreadable,
        pairing,
    } = read_report(&body, &agent.families)?;
    let ledger = state.policy.store().ledger()?;
    // What goes into the ledger: the asked families' answered requests in this cycle,
    // and renewals of CMIDs the ledger has from an earlier cycle of this station.
    let mut entries: Vec<(&spp::Attempt, &spp::Reply, u64)> = Vec::new();
    let mut ignored = Vec::new();
    for a in &pairing.attempts {
        let Some(reply) = &a.reply else { continue };
        let cycle = if agent.families.contains(&a.family) {
            Some(agent.generation)
        } else {
            ledger.cycle_of(mac, a.family, &a.cmid)
        };
        match cycle {
            Some(cycle) => entries.push((a, reply, cycle)),
            // Windows tries on its own at every start; only what netreset asked for,
            // or activated before, is its business.
            None if !ignored.contains(&a.family) => ignored.push(a.family),
            None => {}
        }
    }
    for family in [Family::Windows, Family::Office] {
        let mut cmids: Vec<&str> = ledger.cmids_in_cycle(mac, family, agent.generation);
        cmids.extend(
            entries
                .iter()
                .filter(|(a, _, cycle)| a.family == family && *cycle == agent.generation)
                .map(|(a, _, _)| a.cmid.as_str()),
        );
        cmids.sort_unstable();
        cmids.dedup();
        if cmids.len() > MAX_CMIDS_PER_CYCLE {
            return Err(Error::Invalid(format!(
                "{} {family} CMIDs from {mac} in one deployment: a station has one (two after a rearm)",
                cmids.len()
            )));
        }
    }

    let store = state.policy.store();
    store.agent_seen(mac, body.interactive_user)?;
    let now_s = store.clock().now_ms() / 1000;
    let (mut new, mut renewed) = (0u32, 0u32);
    let mut duplicate_families = Vec::new();
    for (a, reply, cycle) in entries {
        let report = Report {
            // The station's own clock, never ahead of ours.
            at: (a.requested_ms / 1000).min(now_s),
            station: mac,
            family: a.family,
            cmid: a.cmid.clone(),
            result: outcome(reply),
            activated: reply.activated,
            count: reply.count,
            cycle,
            last: 0,
        };
        match store.add_report(&report)? {
            Added::Known => {}
            Added::Renewed => renewed += 1,
            Added::New => new += 1,
            Added::Duplicate(d) => {
                new += 1;
                store.record(
                    mac,
                    "duplicate-cmid",
                    format!(
                        "{} CMID {} again after a reset (cycles {} and {}): the image is not generalized (sysprep /generalize)",
                        d.family, d.cmid, d.first_cycle, d.again_cycle
                    ),
                )?;
                tracing::warn!(%mac, family = %d.family, cmid = %d.cmid, "duplicate CMID: image not generalized");
                duplicate_families.push(d.family);
            }
        }
    }
    if !unreadable.is_empty() {
        store.record(
            mac,
            "agent-report",
            format!(
                "{} activation events could not be read, the first: {}",
                unreadable.len(),
                unreadable[0].error
            ),
        )?;
    }
    if !pairing.ambiguous.is_empty() {
        store.record(
            mac,
            "agent-report",
            format!(
                "{} KMS replies could not be told apart (Windows and Office asked at once): credited to no family",
                pairing.ambiguous.len()
            ),
        )?;
    }

    // What the campaign hears: per asked family, the licence, then the newest attempt.
    for family in agent.families.iter().copied() {
        if !body.licenses.is_empty() {
            let channel = match spp::channel(&body.licenses, family) {
                Channel::KmsClient => None,
                Channel::NotKmsClient(channel) => Some(channel),
                Channel::Missing => Some(String::new()),
            };
            if let Some(channel) = channel {
                store.record(
                    mac,
                    "not-kms-client",
                    if channel.is_empty() {
                        format!("{family}: no licensed product")
                    } else {
                        format!("{family}: licence channel {channel}, not a KMS client")
                    },
                )?;
                state.campaigns.station(
                    mac,
                    Event::NotKmsClient {
                        mac,
                        generation: agent.generation,
                        family,
                        channel,
                    },
                );
                continue;
            }
        }
        // The newest in the log's own order: the station's clock may have been
        // stepped since.
        let latest = pairing.attempts.iter().rfind(|a| a.family == family);
        let result = match latest {
            Some(spp::Attempt {
                reply: Some(reply), ..
            }) => Some((Some(outcome(reply)), reply.count)),
            // 12288 with no 12289: the host did not answer; said once the agent
            // stopped trying.
            Some(a) if body.gave_up.contains(&family) => {
                Some(((a.request_hresult != 0).then_some(a.request_hresult), 0))
            }
            None if body.gave_up.contains(&family) => Some((None, 0)),
            _ => None,
        };
        let Some((result, count)) = result else {
            continue;
        };
        if new > 0 || body.gave_up.contains(&family) {
            store.record(
                mac,
                "agent-report",
                match result {
                    Some(r) => format!("{family}: result 0x{r:08X}, count {count}"),
                    None => format!("{family}: no reply from the KMS host"),
                },
            )?;
        }
        // Forwarded even when the ledger knew it: the campaign takes a report once
        // per cycle, and a retry after a crash of the daemon is how a lost one
        // reaches it.
        state.campaigns.station(
            mac,
            Event::Report {
                mac,
                generation: agent.generation,
                family,
                result,
                count,
                duplicate_cmid: duplicate_families.contains(&family),
            },
        );
    }
    // After the report: the cycle it ends is counted, then the session counts.
    state
        .campaigns
        .station(mac, session_event(mac, body.interactive_user));
    Ok(ReportAnswer {
        recorded: new,
        renewed,
        duplicate_cmid: !duplicate_families.is_empty(),
        ambiguous: pairing.ambiguous.len(),
        ignored,
        unreadable,
    })
}

/// What a campaign hears of a station's session: a user at it takes it out until
/// the user logs off.
fn session_event(mac: MacAddr, user: bool) -> Event {
    if user {
        Event::InUse(mac)
    } else {
        Event::Free(mac)
    }
}

/// `GET /api/v1/agent/commands?station=MAC&wait=S&interactive_user=0|1`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Poll {
    /// Seconds to wait for a command, at most (and by default) 55.
    pub wait: Option<u64>,
    /// 1 while an interactive user is logged on, 0 when none is.
    interactive_user: Option<u8>,
}

/// A command poll of `agent`: a sign of life (campaigns reboot a polling station
/// rather than wake it), and, when the agent said, whether a user is logged on.
pub fn polled(state: &Services, agent: &Agent, poll: &Poll) -> Result<(), Error> {
    let mac = agent.mac;
    let logged_in = match poll.interactive_user {
        None => None,
        Some(0) => Some(false),
        Some(1) => Some(true),
        Some(n) => {
            return Err(Error::Invalid(format!(
                "interactive_user={n}: expected 0 or 1"
            )))
        }
    };
    state.policy.store().agent_polled(mac, logged_in)?;
    if let Some(user) = logged_in {
        state.campaigns.station(mac, session_event(mac, user));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The station, if the body says (it must be the `?station=` of the request).
    #[serde(default)]
    pub station: Option<String>,
    pub id: String,
    pub outcome: String,
}

/// What the agent did with command `id`: `run`, `warned` (forced, with a user
/// logged on: the user was warned and the restart follows a minute later) or
/// `refused` (a user is logged on and the command was not forced), from `agent`.
pub fn command_result(state: &Services, agent: &Agent, body: &CommandResult) -> Result<(), Error> {
    same_station(agent, body.station.as_deref())?;
    let mac = agent.mac;
    if body.id.is_empty() || body.id.len() > 32 || !body.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "id {:?}: expected the command's id",
            body.id
        )));
    }
    let store = state.policy.store();
    match body.outcome.as_str() {
        "run" => store.record(mac, "command-run", body.id.clone())?,
        "warned" => store.record(
            mac,
            "command-run",
            format!(
                "{} (a user was logged on and warned a minute ahead)",
                body.id
            ),
        )?,
        "refused" => {
            store.agent_polled(mac, Some(true))?;
            store.record(
                mac,
                "command-refused",
                format!(
                    "{}: a user is logged on and the command was not forced",
                    body.id
                ),
            )?;
            state.campaigns.station(mac, Event::InUse(mac));
        }
        other => {
            return Err(Error::Invalid(format!(
                "outcome {other:?}: expected \"run\", \"warned\" or \"refused\""
            )))
        }
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub command: String,
    #[serde(default)]
    pub force: bool,
}

/// Queue `body.command` for the agent of `mac`; refused while its agent says a user
/// is logged on, unless forced.
pub fn queue_command(state: &Services, mac: MacAddr, body: &CommandBody) -> Result<Command, Error> {
    if !matches!(body.command.as_str(), "reboot" | "shutdown") {
        return Err(Error::Invalid(format!(
            "command {:?}: expected \"reboot\" or \"shutdown\"",
            body.command
        )));
    }
    let store = state.policy.store();
    let station = store
        .station(mac)?
        .ok_or_else(|| Error::NotFound(format!("no station {mac}")))?;
    if station.logged_in && !body.force {
        return Err(Error::Conflict(format!(
            "{mac} is in use (its agent reports a logged-in user): not sent; add \"force\": true to {} it anyway (the user is warned a minute ahead)",
            body.command
        )));
    }
    let cmd = store.queue_command(mac, &body.command, body.force)?;
    store.record(mac, "command-queued", cmd.describe())?;
    state.commands_queued.notify_waiters();
    Ok(cmd)
}

/// The oldest command queued for `mac`, handed out once.
pub fn take_command(state: &Services, mac: MacAddr) -> Result<Option<Command>, Error> {
    let store = state.policy.store();
    let Some(cmd) = store.take_command(mac)? else {
        return Ok(None);
    };
    store.record(mac, "command-sent", cmd.describe())?;
    Ok(Some(cmd))
}
