//! The API contract: an OpenAPI 3.1 document generated from the handlers' own
//! `#[utoipa::path]` attributes and types, served at `GET /api/v1/openapi.json`.
//!
//! Routes are registered in ONE place, [`routes`]: each `routes!(handler)` adds the
//! axum route and its documented operation together, so a route cannot be served
//! without being documented. [`super::router`] serves the routes of [`routes`];
//! [`document`] is their documentation. What every operation of a group shares is
//! added here, not repeated in each handler:
//!
//! - every route behind the token middleware gets the `bearer` security
//!   requirement and its answers 401 (`unauthenticated`, `invalid_token`), 429
//!   (`rate_limited`, with `Retry-After`) and 503 (`custody_sealed`,
//!   `database_unavailable`, `unavailable`); 403 `forbidden` unless every role may
//!   call it; the roles (`x-roles`, from the handler's attribute) are also named in
//!   the description;
//! - an operation with a request body: 400 `malformed_json`/`bad_request`, 415
//!   `unsupported_media_type`, 422 `invalid_request`;
//! - an operation with path parameters: 400 `invalid_id`; with query parameters:
//!   400 `invalid_query`;
//! - every operation: 413 `body_too_large` (the router-wide body limit) and 500
//!   `internal`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HttpMethod, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{audit, auth, dkg, handlers, presign, tx, AppState};

/// Name of the bearer-token security scheme.
pub const BEARER: &str = "bearer";
/// Extension naming the roles allowed to call an operation.
pub const X_ROLES: &str = "x-roles";
/// Every role (an operation any valid token may call).
pub const ALL_ROLES: [&str; 4] = ["admin", "operator", "approver", "auditor"];

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "signer node API",
        description = "REST API of one signer node of a threshold-signing Bitcoin custody \
            cluster. HTTPS only (the cluster's private CA); every route under `/api/v1` except \
            this document needs `Authorization: Bearer <token>`, and each names the token roles \
            it accepts (`x-roles`; an admin passes every role check except human approvals). \
            Errors are JSON `{\"code\", \"message\"}` with a stable `code` (see `Error`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "node", description = "Liveness, readiness, metrics and this contract"),
        (name = "cluster", description = "Cluster status, peers, the caller's identity"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "audit", description = "Hash-chained audit log and compliance exports"),
        (name = "keys", description = "Key ceremonies (DKG), aux info, keys and addresses"),
        (name = "transactions", description = "Payments, UTXOs, human approvals and approvers"),
        (name = "presignatures", description = "The CGGMP24 presignature pool"),
    )
)]
struct ApiDoc;

/// Every (method, path) the API serves, kept by hand on purpose: the unit tests
/// compare the document (and so the router, made from the same registration) with
/// it, and `tests/openapi.rs` the document a live node serves, so removing or adding
/// a route by accident fails a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/cluster/status"),
    ("GET", "/api/v1/whoami"),
    ("POST", "/api/v1/p2p/ping"),
    ("POST", "/api/v1/cluster/peers"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{id}"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/verify"),
    ("GET", "/api/v1/audit/export"),
    ("POST", "/api/v1/dkg/start"),
    ("GET", "/api/v1/dkg/status"),
    ("GET", "/api/v1/dkg/ceremonies/{id}"),
    ("GET", "/api/v1/keys"),
    ("GET", "/api/v1/keys/{id}/addresses"),
    ("POST", "/api/v1/keys/{id}/reshare"),
    ("POST", "/api/v1/aux-info/start"),
    ("GET", "/api/v1/aux-info/status"),
    ("POST", "/api/v1/transactions"),
    ("GET", "/api/v1/transactions"),
    ("GET", "/api/v1/transactions/{id}"),
    ("POST", "/api/v1/transactions/{id}/approvals"),
    ("POST", "/api/v1/approvers"),
    ("GET", "/api/v1/approvers"),
    ("POST", "/api/v1/utxos"),
    ("GET", "/api/v1/presignatures/status"),
    ("POST", "/api/v1/presignatures/generate"),
];

/// Adds the `bearer` HTTP security scheme.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sgn_<id>_<secret>")
                    .description(Some(
                        "API token `sgn_<16 lower-case alphanumerics>_<64 hex>`, made by \
                         `signer token create` or `POST /api/v1/tokens`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route of the API with its documentation. `auth`: the state the token
/// middleware checks against (`None` only to build the document).
pub(super) fn routes(auth: Option<AppState>) -> OpenApiRouter<AppState> {
    let public = OpenApiRouter::new()
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::ready))
        .routes(routes!(handlers::metrics))
        .routes(routes!(openapi_json));
    let mut protected = OpenApiRouter::new()
        .routes(routes!(handlers::cluster_status))
        .routes(routes!(handlers::whoami))
        .routes(routes!(handlers::p2p_ping))
        .routes(routes!(handlers::add_peer))
        .routes(routes!(handlers::list_tokens, handlers::create_token))
        .routes(routes!(handlers::revoke_token))
        .routes(routes!(handlers::audit_list))
        .routes(routes!(handlers::audit_verify))
        .routes(routes!(audit::export))
        .routes(routes!(dkg::start))
        .routes(routes!(dkg::status))
        .routes(routes!(dkg::ceremony))
        .routes(routes!(dkg::keys))
        .routes(routes!(dkg::addresses))
        .routes(routes!(dkg::reshare))
        .routes(routes!(dkg::start_aux))
        .routes(routes!(dkg::aux_status))
        .routes(routes!(tx::submit, tx::list))
        .routes(routes!(tx::get_one))
        .routes(routes!(tx::approve))
        .routes(routes!(tx::endorse_approver, tx::list_approvers))
        .routes(routes!(tx::import_utxos))
        .routes(routes!(presign::status))
        .routes(routes!(presign::generate));
    for (_, _, op) in operations_mut(protected.get_openapi_mut()) {
        protect(op);
    }
    if let Some(state) = auth {
        protected = protected.route_layer(axum::middleware::from_fn_with_state(
            state,
            auth::authenticate,
        ));
    }
    let mut all = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public)
        .merge(protected);
    for (_, _, op) in operations_mut(all.get_openapi_mut()) {
        common_errors(op);
    }
    all
}

/// The API's OpenAPI document.
pub fn document() -> OpenApi {
    routes(None).into_openapi()
}

/// The document as JSON, made once.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the document: {e}\"}}"))
    })
}

/// `GET /api/v1/openapi.json`: this API's contract (OpenAPI 3.1), no authentication.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "node",
    operation_id = "openapi",
    summary = "This API's contract (OpenAPI 3.1)",
    description = "The OpenAPI 3.1 document of this API, generated from the handlers. Public \
        (it holds no secrets) and served without a token, like `/health`.",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json",
         body = Object),
    )
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

/// Every operation of `doc` with its method and path.
pub fn operations_mut(
    doc: &mut OpenApi,
) -> impl Iterator<Item = (HttpMethod, &str, &mut Operation)> + '_ {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            (HttpMethod::Get, item.get.as_mut()),
            (HttpMethod::Put, item.put.as_mut()),
            (HttpMethod::Post, item.post.as_mut()),
            (HttpMethod::Delete, item.delete.as_mut()),
            (HttpMethod::Options, item.options.as_mut()),
            (HttpMethod::Head, item.head.as_mut()),
            (HttpMethod::Patch, item.patch.as_mut()),
            (HttpMethod::Trace, item.trace.as_mut()),
        ]
        .into_iter()
        .filter_map(move |(m, op)| op.map(|op| (m, path.as_str(), op)))
    })
}

/// The roles of an operation (`x-roles`), if it names them.
pub fn roles_of(op: &Operation) -> Option<Vec<String>> {
    let v = op.extensions.as_ref()?.get(X_ROLES)?;
    v.as_array()?
        .iter()
        .map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// What the token middleware adds to an operation behind it.
fn protect(op: &mut Operation) {
    op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    let roles = roles_of(op).unwrap_or_default();
    let any_role = ALL_ROLES.iter().all(|r| roles.iter().any(|x| x == r));
    let line = if any_role {
        "Roles: any valid token.".to_owned()
    } else {
        format!("Roles: {}.", roles.join(", "))
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{line}"),
        _ => line,
    });
    add_error(
        op,
        401,
        &["unauthenticated", "invalid_token"],
        "missing, malformed, unknown or revoked bearer token",
    );
    if !any_role {
        add_error(
            op,
            403,
            &["forbidden"],
            "the token's role may not call this",
        );
    }
    add_error(
        op,
        429,
        &["rate_limited"],
        "the token's (or, without a valid token, the client address's) rate limit is spent; \
         retry after `Retry-After` seconds",
    );
    if let Some(RefOr::T(r)) = op.responses.responses.get_mut("429") {
        r.headers.insert(
            "Retry-After".to_owned(),
            utoipa::openapi::header::HeaderBuilder::new()
                .schema(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("seconds to wait"))
                .build(),
        );
    }
    add_error(
        op,
        503,
        &["custody_sealed", "database_unavailable", "unavailable"],
        "the node cannot serve this now (custody sealed, database down, too many token \
         verifications at once); retry later",
    );
}

/// What every operation may answer, by its shape.
fn common_errors(op: &mut Operation) {
    if op.request_body.is_some() {
        add_error(
            op,
            400,
            &["malformed_json", "bad_request"],
            "the body is not JSON",
        );
        add_error(
            op,
            415,
            &["unsupported_media_type"],
            "the body is not `Content-Type: application/json`",
        );
        add_error(
            op,
            422,
            &["invalid_request"],
            "the JSON does not match the body's schema (missing or unknown field, wrong type)",
        );
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    let in_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let in_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    if in_path {
        add_error(op, 400, &["invalid_id"], "a malformed path parameter");
    }
    if in_query {
        add_error(
            op,
            400,
            &["invalid_query"],
            "a query string that does not decode, an unknown or repeated parameter",
        );
    }
    add_error(
        op,
        413,
        &["body_too_large"],
        "the request body is larger than `api.max_body_bytes`",
    );
    add_error(
        op,
        500,
        &["internal"],
        "an internal error (details in the node's log, never in the answer)",
    );
}

/// Adds `codes` to the error answer `status` of `op` (created with the error body
/// schema when absent; its description lists every code).
fn add_error(op: &mut Operation, status: u16, codes: &[&str], why: &str) {
    let key = status.to_string();
    let listed: String = codes
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match op.responses.responses.get_mut(&key) {
        Some(RefOr::T(r)) => {
            let missing: Vec<&&str> = codes
                .iter()
                .filter(|c| !r.description.contains(&format!("`{c}`")))
                .collect();
            if !missing.is_empty() {
                let more: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
                r.description = format!("{}; {}: {why}", r.description, more.join(", "));
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses.responses.insert(
                key,
                RefOr::T(
                    ResponseBuilder::new()
                        .description(format!("{listed}: {why}"))
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Error")))
                                .build(),
                        )
                        .build(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Served without a token.
    const PUBLIC: &[&str] = &["/health", "/ready", "/metrics", "/api/v1/openapi.json"];

    fn method_name(m: &HttpMethod) -> String {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_uppercase))
            .unwrap_or_default()
    }

    fn pairs(doc: &mut OpenApi) -> BTreeSet<(String, String)> {
        operations_mut(doc)
            .map(|(m, p, _)| (method_name(&m), p.to_owned()))
            .collect()
    }

    /// Every `"$ref"` string anywhere in `v`.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// The value a JSON pointer (`#/components/schemas/X`) names, if any.
    fn resolve<'a>(doc: &'a serde_json::Value, r: &str) -> Option<&'a serde_json::Value> {
        doc.pointer(r.strip_prefix('#')?)
    }

    #[test]
    fn document_is_valid_openapi_3_1_with_resolvable_refs_ids_and_responses() {
        let text = document_json();
        let parsed: OpenApi = serde_json::from_str(text).expect("parses as utoipa OpenApi");
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        let version = v["openapi"].as_str().expect("openapi field");
        assert!(version.starts_with("3.1."), "openapi {version}");
        assert_eq!(v["info"]["title"], "signer node API");
        assert_eq!(
            v["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let mut all = Vec::new();
        refs(&v, &mut all);
        assert!(!all.is_empty());
        for r in &all {
            assert!(
                r.starts_with("#/components/") && resolve(&v, r).is_some(),
                "unresolved $ref {r}"
            );
        }
        let mut parsed = parsed;
        let mut ids = BTreeSet::new();
        for (m, p, op) in operations_mut(&mut parsed) {
            let label = format!("{} {p}", method_name(&m));
            let id = op.operation_id.clone().unwrap_or_default();
            assert!(!id.is_empty(), "{label}: no operationId");
            assert!(ids.insert(id.clone()), "{label}: operationId {id} twice");
            let statuses: Vec<&String> = op.responses.responses.keys().collect();
            assert!(
                statuses.iter().any(|s| s.starts_with('2')),
                "{label}: no success answer in {statuses:?}"
            );
            assert!(
                op.summary.as_deref().is_some_and(|s| !s.is_empty()),
                "{label}: no summary"
            );
            for (status, r) in &op.responses.responses {
                let RefOr::T(r) = r else { continue };
                if status.starts_with('4') || status.starts_with('5') && status != "503" {
                    let schema = serde_json::to_value(&r.content["application/json"].schema)
                        .expect("schema");
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Error",
                        "{label} {status}: error answers carry the error body"
                    );
                    assert!(
                        r.description.contains('`'),
                        "{label} {status}: no code named"
                    );
                }
            }
        }
    }

    #[test]
    fn document_lists_exactly_the_routes_the_router_serves() {
        let expected: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        // The router and the document come from one registration (`routes`); the
        // document of what the router serves is the one `document()` gives.
        let mut served = routes(None);
        assert_eq!(pairs(served.get_openapi_mut()), expected);
        assert_eq!(pairs(&mut document()), expected);
        let mut from_json: OpenApi = serde_json::from_str(document_json()).expect("parses");
        assert_eq!(pairs(&mut from_json), expected);
    }

    #[test]
    fn protected_operations_need_a_bearer_token_and_name_their_roles() {
        let mut doc = document();
        for (m, p, op) in operations_mut(&mut doc) {
            let label = format!("{} {p}", method_name(&m));
            let roles = roles_of(op);
            if PUBLIC.contains(&p) {
                assert!(op.security.is_none(), "{label}: public, yet has security");
                assert!(roles.is_none(), "{label}: public, yet names roles");
                assert!(!op.responses.responses.contains_key("401"), "{label}");
                continue;
            }
            let security = serde_json::to_value(&op.security).expect("security");
            assert_eq!(security, serde_json::json!([{ BEARER: [] }]), "{label}");
            let roles = roles.unwrap_or_else(|| panic!("{label}: no {X_ROLES}"));
            assert!(!roles.is_empty(), "{label}: empty {X_ROLES}");
            for r in &roles {
                assert!(ALL_ROLES.contains(&r.as_str()), "{label}: unknown role {r}");
            }
            let desc = op.description.as_deref().unwrap_or_default();
            assert!(
                desc.contains("Roles: "),
                "{label}: roles not in the description"
            );
            for status in ["401", "429", "503"] {
                assert!(
                    op.responses.responses.contains_key(status),
                    "{label}: no {status}"
                );
            }
            if roles.len() < ALL_ROLES.len() {
                assert!(
                    op.responses.responses.contains_key("403"),
                    "{label}: no 403"
                );
            }
        }
    }

    #[test]
    fn request_bodies_and_parameters_have_their_error_answers() {
        let mut doc = document();
        for (m, p, op) in operations_mut(&mut doc) {
            let label = format!("{} {p}", method_name(&m));
            if op.request_body.is_some() {
                for status in ["400", "415", "422"] {
                    assert!(
                        op.responses.responses.contains_key(status),
                        "{label}: {status}"
                    );
                }
            }
            for (status, r) in &op.responses.responses {
                let RefOr::T(r) = r else { continue };
                assert!(!r.description.is_empty(), "{label} {status}");
            }
            if p.contains('{') {
                let params = op.parameters.as_deref().unwrap_or_default();
                assert!(
                    params
                        .iter()
                        .any(|x| matches!(x.parameter_in, ParameterIn::Path) && x.name == "id"),
                    "{label}: path parameter not documented"
                );
            }
        }
    }
}
