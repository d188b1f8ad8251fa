//! The KMS overview (`GET /api/v1/kms`): per family, the count stations last reported, the target
//! (threshold + the default margin), and the count the ledger projects for the next
//! 60 days if no station asks again (a CMID ages out 30 days after its last request),
//! with the first day it falls below the target; and the next top-up: the top-up
//! campaign under way or waiting for its window, else the one keep-alive plans.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::{Error, Services};
use crate::engine::Family;

const DAYS: u32 = 60;
pub const DEFAULT_MARGIN: u32 = 2;

/// One family's count, target and projection.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FamilyOverview {
    /// The count stations last reported (what the KMS host said).
    pub reported: u32,
    /// The threshold plus the default margin.
    pub target: u32,
    /// The CMIDs the ledger knows that the host still counts today.
    pub known_cmids: u32,
    /// The count the ledger projects for each of the next `projection_days` days if
    /// no station asks again (a CMID ages out 30 days after its last request).
    pub projection: Vec<u32>,
    /// The first moment the projection falls below the target (RFC 3339).
    pub below_target_from: Option<String>,
}

/// The next top-up: the campaign under way or waiting for its window, else the one
/// the keep-alive plans.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TopUp {
    /// The top-up campaign under way, or null for a planned one.
    pub campaign: Option<u64>,
    pub families: Vec<super::views::FamilyName>,
    /// Where the campaign under way is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<super::views::CampaignState>,
    /// When its window opens (RFC 3339).
    pub window_opens: Option<String>,
    /// The school day a planned top-up must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub school_day: Option<String>,
    /// The moment its counts must last to.
    pub count_until: Option<String>,
}

/// What `GET /api/v1/kms` shows.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Per family (`windows`, `office`).
    pub families: BTreeMap<String, FamilyOverview>,
    pub next_top_up: Option<TopUp>,
    pub projection_days: u32,
    /// Reports the ledger holds.
    pub reports: usize,
}

/// The overview `GET /api/v1/kms` shows.
pub fn overview(state: &Services) -> Result<Overview, Error> {
    use super::views::{family, CampaignView};
    let ledger = state.policy.store().ledger()?;
    let now = state.policy.store().clock().now_ms() / 1000;
    let mut families = BTreeMap::new();
    for f in [Family::Windows, Family::Office] {
        let target = f.threshold() + DEFAULT_MARGIN;
        let below = ledger
            .falls_below(f, target, now, now + u64::from(DAYS) * 86_400)
            .map(|t| crate::clock::rfc3339(t * 1000));
        families.insert(
            f.name().to_owned(),
            FamilyOverview {
                reported: ledger.latest_count(f),
                target,
                known_cmids: ledger.projected(f, now),
                projection: ledger.projection(f, now, DAYS),
                below_target_from: below,
            },
        );
    }
    let next_top_up = match running_top_up(state)? {
        Some(r) => {
            let next = state
                .schedule
                .as_ref()
                .as_ref()
                .and_then(|s| s.next_open(now as i64));
            Some(TopUp {
                campaign: Some(r.id),
                families: r.families.iter().copied().map(family).collect(),
                state: Some(CampaignView::new(&r).state),
                window_opens: next.map(|t| crate::clock::rfc3339(t.max(0) as u64 * 1000)),
                school_day: None,
                count_until: r.horizon.map(|h| crate::clock::rfc3339(h * 1000)),
            })
        }
        None => super::campaigns::top_up_plan(state, now)?.map(|plan| TopUp {
            campaign: None,
            families: plan.families.iter().copied().map(family).collect(),
            state: None,
            window_opens: Some(crate::clock::rfc3339(plan.opens.max(0) as u64 * 1000)),
            school_day: Some(plan.school_day.to_string()),
            count_until: Some(crate::clock::rfc3339(plan.horizon * 1000)),
        }),
    };
    Ok(Overview {
        families,
        next_top_up,
        projection_days: DAYS,
        reports: ledger.reports().len(),
    })
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
