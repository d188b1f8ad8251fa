//! The OpenAPI 3.1 document of `/api/v1` (`GET /api/v1/openapi.json`), made from the
//! handlers' `#[utoipa::path]` attributes and the types they take and answer with:
//! the router and the document come from the same list (`api::api_routes`).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: what went wrong, in words an admin can act on.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "no station 52:54:00:12:34:56")]
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "netreset",
        description = "The boot server's API: the inventory, resets, KMS campaigns, the KMS \
            overview, the audit log and live events (admin token); the Windows agent's \
            endpoints (agent token, with ?station=MAC); the restore client's (restore token).",
        license(name = "MIT OR Apache-2.0"),
    ),
    modifiers(&Security),
    components(schemas(ErrorBody)),
    tags(
        (name = "stations", description = "The inventory and its resets"),
        (name = "campaigns", description = "KMS activation campaigns"),
        (name = "kms", description = "The KMS counts and their projection"),
        (name = "admin", description = "Health, the audit log, live events, this document"),
        (name = "agent", description = "The Windows agent on a restored station"),
        (name = "restore", description = "The restore client in the restore environment"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            "admin",
            bearer("The admin token: api.token, the file api.token_file, or data_dir/admin-token."),
        );
        components.add_security_scheme(
            "agent",
            bearer("The agent token of the station's station.json (its current reset); the request names the station with ?station=MAC."),
        );
        components.add_security_scheme(
            "restore",
            bearer("The per-restore token of the restore environment's kernel command line."),
        );
    }
}

fn error(description: &str) -> RefOr<Response> {
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// The error answers every endpoint may give.
pub struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "The request is not right: the message says what"),
            ("401", "No token, or the wrong one"),
            ("404", "No such station, campaign or endpoint"),
            (
                "409",
                "Refused in this state (a reset under way, a campaign overlaps, ...)",
            ),
            ("413", "The body is over the limit (2 MiB)"),
            ("500", "The store failed; the message says how"),
            (
                "503",
                "The server is at its connection limit (admin calls still pass)",
            ),
        ]
        .into_iter()
        .map(|(status, what)| (status.to_owned(), error(what)))
        .collect()
    }
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "admin",
    responses((status = 200, description = "The OpenAPI 3.1 document of /api/v1 (no token needed)", content_type = "application/json", body = Object), Errors)
)]
pub async fn document() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi_json().to_owned(),
    )
        .into_response()
}
