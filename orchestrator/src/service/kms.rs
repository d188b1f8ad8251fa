//! The KMS overview (`GET /api/v1/kms`): per family, the count stations last reported, the target
//! (threshold + the default margin), and the count the ledger projects for the next
//! 60 days if no station asks again (a CMID ages out 30 days after its last request),
//! with the first day it falls below the target; and the next top-up: the top-up
//! campaign under way or waiting for its window, else the one keep-alive plans.

use serde_json::{json, Value};

use super::{Error, Services};
use crate::engine::Family;

const DAYS: u32 = 60;
const DEFAULT_MARGIN: u32 = 2;

/// The overview `GET /api/v1/kms` shows.
pub fn overview(state: &Services) -> Result<Value, Error> {
    let ledger = state.policy.store().ledger()?;
    let now = state.policy.store().clock().now_ms() / 1000;
    let mut families = serde_json::Map::new();
    for family in [Family::Windows, Family::Office] {
        let target = family.threshold() + DEFAULT_MARGIN;
        let below = ledger
            .falls_below(family, target, now, now + u64::from(DAYS) * 86_400)
            .map(|t| crate::clock::rfc3339(t * 1000));
        families.insert(
            family.name().to_owned(),
            json!({
                "reported": ledger.latest_count(family),
                "target": target,
                "known_cmids": ledger.projected(family, now),
                "projection": ledger.projection(family, now, DAYS),
                "below_target_from": below,
            }),
        );
    }
    let top_up = match running_top_up(state)? {
        Some(r) => {
            let next = state
                .schedule
                .as_ref()
                .as_ref()
                .and_then(|s| s.next_open(now as i64));
            json!({
                "campaign": r.id,
                "families": r.families,
                "state": r.campaign.state,
                "window_opens": next.map(|t| crate::clock::rfc3339(t.max(0) as u64 * 1000)),
                "count_until": r.horizon.map(|h| crate::clock::rfc3339(h * 1000)),
            })
        }
        None => match super::campaigns::top_up_plan(state, now)? {
            Some(plan) => json!({
                "campaign": null,
                "families": plan.families,
                "window_opens": crate::clock::rfc3339(plan.opens.max(0) as u64 * 1000),
                "school_day": plan.school_day.to_string(),
                "count_until": crate::clock::rfc3339(plan.horizon * 1000),
            }),
            None => Value::Null,
        },
    };
    Ok(json!({
        "families": families,
        "next_top_up": top_up,
        "projection_days": DAYS,
        "reports": ledger.reports().len(),
    }))
}

/// The top-up campaign running or waiting for its window, if any.
fn running_top_up(state: &Services) -> Result<Option<crate::engine::campaign::Record>, Error> {
    Ok(state
        .policy
        .store()
        .campaigns()?
        .into_iter()
        .filter(|r| r.horizon.is_some())
        .filter(|r| r.campaign.state == crate::engine::campaign::State::Running)
        .max_by_key(|r| r.id))
}
