//! The admins' audit log: what changed state, when, on what, from which address.
//! The API records each admin call that changes state (see `api::audit`); admins
//! read it with `GET /api/v1/audit`.

use serde::Deserialize;

use super::{Error, Services};

/// At most this many entries in one answer.
const MAX_LIMIT: usize = 1_000;

/// Record `action` on `target` by `client`, which got `status`.
pub fn record(
    state: &Services,
    action: &str,
    target: &str,
    client: &str,
    status: u16,
) -> Result<(), Error> {
    let entry = state.policy.store().audit(action, target, client, status)?;
    tracing::info!(action, target, client, status, seq = entry.seq, "audit");
    Ok(())
}

/// `GET /api/v1/audit?since=SEQ&limit=N`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Query {
    /// Only entries after this `seq` (for polling: the last one seen).
    pub since: Option<u64>,
    /// How many of the newest, 100 by default, 1,000 at most.
    pub limit: Option<usize>,
}

/// The newest entries, oldest first, each with its time as RFC 3339.
pub fn list(state: &Services, query: &Query) -> Result<super::views::AuditLog, Error> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::Invalid(format!("limit={limit}: 1 to {MAX_LIMIT}")));
    }
    let entries = state
        .policy
        .store()
        .audit_log(query.since, limit)?
        .iter()
        .map(super::views::AuditEntry::from)
        .collect();
    Ok(super::views::AuditLog {
        entries,
        kept: crate::store::AUDIT_KEEP,
    })
}
