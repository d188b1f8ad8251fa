//! `GET /api/v1/kms`: the KMS overview of `service::kms`: per family the count
//! stations last reported, the target, the ledger's projection for the next 60 days,
//! and the next top-up.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use super::{blocking, ApiError, AppState};

pub async fn show(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(blocking(&state, crate::service::kms::overview).await?))
}
