//! `GET /api/v1/kms`: per family, the count stations last reported, the target
//! (threshold + the default margin), and the count the ledger projects for the next
//! 60 days if no station asks again (a CMID ages out 30 days after its last request),
//! with the first day it falls below the target.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::engine::Family;
use crate::store::now_ms;

const DAYS: u32 = 60;
const DEFAULT_MARGIN: u32 = 2;

pub async fn show(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let ledger = state.policy.store().ledger()?;
    let now = now_ms() / 1000;
    let mut families = serde_json::Map::new();
    for family in [Family::Windows, Family::Office] {
        let target = family.threshold() + DEFAULT_MARGIN;
        let below = ledger
            .falls_below(family, target, now, now + u64::from(DAYS) * 86_400)
            .map(|t| super::stations::rfc3339(t * 1000));
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
    Ok(Json(json!({
        "families": families,
        "projection_days": DAYS,
        "reports": ledger.reports().len(),
    })))
}
