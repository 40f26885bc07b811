//! The API contract on a running node: `GET /api/v1/openapi.json` is served without
//! a token, lists every route, every documented route is served (and protected as
//! documented), and the roles it names are the roles the node enforces.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use cluster_tests::Cluster;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start(1, 1))
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The contract as node-1 serves it, fetched without a token (once the node is
/// ready).
async fn served_document() -> Value {
    let c = cluster();
    c.wait_ready(1).await;
    let r = c
        .client()
        .get(c.url(0, "/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    r.json().await.unwrap()
}

/// (METHOD, path, operation) of every operation of `doc`.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// `path` with its parameters filled in (a nil uuid fits every one).
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
}

/// A body the operation's schema accepts (so extraction succeeds and the handler's
/// role check is what answers), or `None` for operations without a body.
fn valid_body(operation_id: &str) -> Option<Value> {
    Some(match operation_id {
        "create_token" => json!({"name": "contract-test", "role": "auditor"}),
        "start_dkg" => json!({"protocol": "frost", "threshold": 2}),
        "start_aux_info" => json!({}),
        "reshare_key" => json!({}),
        "submit_transaction" => json!({"psbt": "cHNidP8BAAoCAAAAAAAAAAAAAA=="}),
        "approve_transaction" => json!({"approver": "alice", "signature": "00"}),
        "endorse_approver" => {
            json!({"name": "alice", "role": "treasury", "public_key": "11".repeat(32)})
        }
        "import_utxos" => json!({"raw_tx": "00"}),
        "generate_presignatures" => json!({"count": 1}),
        "add_peer" => {
            json!({"id": "node-9", "addr": "127.0.0.1:9", "certificate_pem": "not a certificate"})
        }
        _ => return None,
    })
}

async fn send(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let c = cluster();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = c.client().request(method, c.url(0, &concrete(path)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_contract_is_served_without_a_token_and_lists_every_route() {
    let doc = served_document().await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let listed: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let expected: BTreeSet<(String, String)> = signer::api::openapi::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(listed, expected);
    // The node serves the document its own handlers generate.
    let generated: Value =
        serde_json::to_value(signer::api::openapi::document()).expect("document as JSON");
    assert_eq!(doc, generated);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn every_documented_route_is_served_and_protected_as_documented() {
    let doc = served_document().await;
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap();
        let (status, body) = send(&method, &path, None, valid_body(id)).await;
        let label = format!("{method} {path} without a token");
        assert_ne!(status, 404, "{label}: not served ({body})");
        assert_ne!(status, 405, "{label}: method not served ({body})");
        if op.get("security").is_some() {
            assert_eq!(status, 401, "{label}: {body}");
            assert_eq!(body["code"], "unauthenticated", "{label}");
            assert!(
                op["responses"].get("401").is_some(),
                "{label}: 401 not documented"
            );
        } else {
            assert_eq!(status, 200, "{label}: {body}");
        }
    }
}

#[tokio::test]
async fn the_roles_the_contract_names_are_the_roles_the_node_enforces() {
    let c = cluster();
    let doc = served_document().await;
    let mut tokens = vec![("admin".to_owned(), c.admin().to_owned())];
    for role in ["operator", "approver", "auditor"] {
        let t = c.create_token(0, &format!("roles-{role}"), role).await;
        tokens.push((role.to_owned(), t));
    }
    for (method, path, op) in operations(&doc) {
        let Some(roles) = op.get("x-roles") else {
            continue;
        };
        let roles: Vec<&str> = roles
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        let id = op["operationId"].as_str().unwrap();
        for (role, token) in &tokens {
            let label = format!("{method} {path} as {role} (x-roles {roles:?})");
            let allowed = roles.contains(&role.as_str());
            // Refused roles are tried everywhere (the handler refuses before it acts);
            // allowed roles only where the request cannot change anything.
            if allowed && method != "GET" {
                continue;
            }
            let (status, body) = send(&method, &path, Some(token), valid_body(id)).await;
            if allowed {
                assert_ne!(status, 403, "{label}: refused: {body}");
                assert!(status < 500, "{label}: {status} {body}");
            } else {
                assert_eq!(status, 403, "{label}: {body}");
                let code = body["code"].as_str().unwrap_or_default();
                assert!(
                    code == "forbidden" || code == "approver_role_required",
                    "{label}: code {code}"
                );
                assert!(
                    op["responses"].get("403").is_some(),
                    "{label}: 403 not documented"
                );
            }
        }
    }
}

/// Found by fuzzing: a request whose body is refused unread (here: no token) leaves
/// a connection hyper will not reuse; the answer says so (`Connection: close`), so
/// a client does not send its next request on it. A body read to its end keeps the
/// connection.
#[tokio::test]
async fn an_answer_to_a_request_whose_body_was_not_read_closes_the_connection() {
    let c = cluster();
    c.wait_ready(1).await;
    let body = json!({"name": "alice", "role": "treasury", "public_key": "11".repeat(32)});
    let r = c
        .client()
        .post(c.url(0, "/api/v1/approvers"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // Read to its end, then refused: the connection stays usable.
    let r = c
        .client()
        .post(c.url(0, "/api/v1/tokens"))
        .bearer_auth(c.admin())
        .json(&json!({"name": 5, "role": "auditor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
    // No body at all: nothing to say.
    let r = c
        .client()
        .get(c.url(0, "/api/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
}
