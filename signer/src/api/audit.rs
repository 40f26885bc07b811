//! `GET /api/v1/audit/export?from=&to=` (auditor): a self-contained, streamed
//! bundle of every node's audit records for a time range (see `docs/AUDIT.md`).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::auth::{Principal, Role};
use super::error::{ApiError, ApiQuery, ErrorBody};
use super::AppState;
use crate::audit::AuditEntry;
use crate::compliance::export::{self, ExportError};

/// Query of `GET /api/v1/audit/export`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Start of the range (RFC 3339); default: the beginning.
    #[serde(default)]
    #[param(format = DateTime)]
    from: Option<String>,
    /// End of the range (RFC 3339, not before `from`); default: now.
    #[serde(default)]
    #[param(format = DateTime)]
    to: Option<String>,
}

fn parse_time(v: Option<&str>, code: &'static str) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| ApiError::bad_request(code, format!("{s:?} is not an RFC 3339 time: {e}")))
    })
    .transpose()
}

/// `GET /api/v1/audit/export` (auditor): the bundle as JSON Lines
/// (`application/x-ndjson`), written as it is read.
#[utoipa::path(
    get,
    path = "/api/v1/audit/export",
    tag = "audit",
    operation_id = "export_audit",
    summary = "Compliance export of every node's audit records",
    description = "A self-contained bundle, streamed as JSON Lines: every node's records in \
        the range, co-signed checkpoints, vote keys, certificates, policy versions and a \
        signed manifest; `signer audit verify-export` checks it offline (docs/AUDIT.md). \
        Audited (`audit.export`).",
    params(ExportQuery),
    responses(
        (status = 200, description = "The bundle, one JSON object per line",
         content_type = "application/x-ndjson", body = String,
         headers(("Content-Disposition" = String,
                  description = "`attachment; filename=\"audit-<bundle id>.jsonl\"`"))),
        (status = 400, description = "`invalid_from`, `invalid_to`, `invalid_range`",
         body = ErrorBody),
        (status = 503, description = "`node_unavailable`: a node's records cannot be fetched",
         body = ErrorBody),
    ),
    extensions(("x-roles" = json!(["admin", "auditor"])))
)]
pub async fn export(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    p.require(&[Role::Auditor])?;
    let from = parse_time(q.from.as_deref(), "invalid_from")?.unwrap_or(DateTime::UNIX_EPOCH);
    let to = parse_time(q.to.as_deref(), "invalid_to")?.unwrap_or_else(Utc::now);
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_range",
            "from must not be after to",
        ));
    }
    let bundle_id = uuid::Uuid::new_v4();
    // An export is audited before it is written.
    s.node
        .store
        .audit(
            &s.node.cfg.node_id,
            AuditEntry::new(&p.token_id, "audit.export")
                .subject(bundle_id.to_string())
                .details(serde_json::json!({"from": from, "to": to})),
        )
        .await?;
    let plan = export::plan(&s.audit, bundle_id, from, to)
        .await
        .map_err(|e| match e {
            ExportError::Sealed => ApiError::unavailable(e.to_string()),
            ExportError::NodeUnavailable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unavailable",
                e.to_string(),
            ),
            ExportError::Internal(m) => ApiError::internal(m),
        })?;
    let rx = export::stream(s.audit.clone(), plan);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut resp = axum::body::Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"audit-{bundle_id}.jsonl\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
