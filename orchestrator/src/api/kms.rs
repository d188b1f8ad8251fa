//! `GET /api/v1/kms`: the KMS overview of `service::kms`: per family the count
//! stations last reported, the target, the ledger's projection for the next 60 days,
//! and the next top-up.

use axum::extract::State;
use axum::Json;

use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::kms::Overview;

/// The KMS counts, their targets, the 60-day projection and the next top-up.
#[utoipa::path(
    get,
    path = "/api/v1/kms",
    tag = "kms",
    security(("admin" = [])),
    responses((status = 200, body = Overview), Errors)
)]
pub async fn show(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    Ok(Json(blocking(&state, crate::service::kms::overview).await?))
}
