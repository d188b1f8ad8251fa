//! KMS campaigns: `POST /api/v1/campaigns` `{room | stations, families, margin?,
//! start, image?}` -> 201 `{id}`; `GET /api/v1/campaigns[/{id}]`; `DELETE
//! /api/v1/campaigns/{id}` (cancel: no new cycles).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::Body;
use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::campaigns::{self, CreateBody};
use crate::service::views::CampaignView;

/// The id of a campaign just started.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: u64,
}

/// A campaign being cancelled: cycles under way finish, no new one starts.
#[derive(Serialize, ToSchema)]
pub struct Cancelling {
    pub id: u64,
    pub cancelling: bool,
}

/// Start a campaign on a room or on listed stations, until the families' counts
/// reach threshold + margin.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns",
    tag = "campaigns",
    request_body = CreateBody,
    security(("admin" = [])),
    responses((status = 201, body = Created), Errors)
)]
pub async fn create(
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<Response, ApiError> {
    let id = blocking(&state, move |s| campaigns::start(s, body, None)).await?;
    let mut answer = (StatusCode::CREATED, Json(Created { id })).into_response();
    answer
        .extensions_mut()
        .insert(super::audit::Target(id.to_string()));
    Ok(answer)
}

/// Every campaign, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    tag = "campaigns",
    security(("admin" = [])),
    responses((status = 200, body = Vec<CampaignView>), Errors)
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<CampaignView>>, ApiError> {
    let all = blocking(&state, campaigns::list).await?;
    Ok(Json(all.iter().map(CampaignView::new).collect()))
}

/// One campaign: its counts against the targets and every station's phase.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}",
    tag = "campaigns",
    params(("id" = String, Path, description = "The campaign's id")),
    security(("admin" = [])),
    responses((status = 200, body = CampaignView), Errors)
)]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    let record = blocking(&state, move |s| campaigns::get(s, &id)).await?;
    Ok(Json(CampaignView::new(&record)))
}

/// Cancel a campaign: cycles under way finish, no new one starts.
#[utoipa::path(
    delete,
    path = "/api/v1/campaigns/{id}",
    tag = "campaigns",
    params(("id" = String, Path, description = "The campaign's id")),
    security(("admin" = [])),
    responses((status = 200, body = Cancelling), Errors)
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Cancelling>, ApiError> {
    let id = blocking(&state, move |s| campaigns::cancel(s, &id)).await?;
    Ok(Json(Cancelling {
        id,
        cancelling: true,
    }))
}
