//! Every JSON body the API takes (the first byte picks which), and the agent's report
//! read as the daemon reads it: its Software Protection event XML parsed and paired,
//! forged counts refused. Also a raw event, and a MAC as a path gives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator::engine::{spp, Family};
use orchestrator::service::{agent, campaigns, resets};
use orchestrator::store::Settings;

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            if let Some(report) = body::<agent::ReportBody>(bytes) {
                for asked in [
                    &[][..],
                    &[Family::Windows],
                    &[Family::Windows, Family::Office],
                ] {
                    if let Ok(read) = agent::read_report(&report, asked) {
                        for a in &read.pairing.attempts {
                            if let Some(reply) = &a.reply {
                                assert!(reply.count <= 2 * a.family.threshold(), "count cap");
                            }
                        }
                    }
                }
            }
        }
        1 => drop(body::<agent::CommandResult>(bytes)),
        2 => drop(body::<agent::CommandBody>(bytes)),
        3 => drop(body::<campaigns::CreateBody>(bytes)),
        4 => drop(body::<resets::ResetRequest>(bytes)),
        5 => drop(body::<resets::ProgressReport>(bytes)),
        6 => drop(body::<Settings>(bytes)),
        7 => {
            if let Ok(xml) = std::str::from_utf8(bytes) {
                let _ = spp::parse(xml);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(mac) = orchestrator::service::parse_mac(text) {
                    assert_eq!(
                        orchestrator::service::parse_mac(&mac.to_string()).ok(),
                        Some(mac)
                    );
                }
            }
        }
    }
});
