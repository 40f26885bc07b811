//! REST API behaviour on a real node: authentication, roles, rate limits, error
//! codes, body limits, audit chain. Runs against a real 1-node dev cluster.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use cluster_tests::Cluster;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start(1, 1))
}

async fn create_token(role: &str, rate: Option<u32>) -> String {
    let c = cluster();
    let mut body = json!({"name": format!("test-{role}"), "role": role});
    if let Some(r) = rate {
        body["rate_limit_per_min"] = json!(r);
    }
    let resp = c
        .client()
        .post(c.url(0, "/api/v1/tokens"))
        .bearer_auth(c.admin())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// `POST` a raw body with a content type to the tokens endpoint.
async fn post_tokens(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["code"].as_str().unwrap_or("<no code>").to_owned())
}

#[tokio::test]
async fn health_needs_no_token_and_names_the_node() {
    let c = cluster();
    let v: Value = c
        .client()
        .get(c.url(0, "/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["node_id"], "node-1");
    assert!(v["version"].is_string() && v["timestamp"].is_string());
}

#[tokio::test]
async fn missing_malformed_and_wrong_tokens_get_401() {
    let c = cluster();
    let client = c.client();
    let url = c.url(0, "/api/v1/cluster/status");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
    let r = client
        .get(&url)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    // Well-formed, right id, wrong secret.
    let admin = c.admin();
    let (prefix, _) = admin.rsplit_once('_').unwrap();
    let forged = format!("{prefix}_{}", "0".repeat(64));
    let r = client.get(&url).bearer_auth(&forged).send().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    let r = client.get(&url).bearer_auth(admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_token_is_refused() {
    let c = cluster();
    let client = c.client();
    let tok = create_token("auditor", None).await;
    let id = tok.split('_').nth(1).unwrap().to_owned();
    let r = c.get(0, "/api/v1/whoami", &tok).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .delete(c.url(0, &format!("/api/v1/tokens/{id}")))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(0, "/api/v1/whoami", &tok).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
}

/// A revocation made with the CLI on the node's host (straight into its database)
/// reaches the running node at once (a PostgreSQL notification in the revoking
/// transaction), not after the node's 30 s cache of verified tokens.
#[tokio::test]
async fn a_token_revoked_with_the_cli_is_refused_by_the_running_node_at_once() {
    let c = cluster();
    let tok = create_token("auditor", None).await;
    let id = tok.split('_').nth(1).unwrap().to_owned();
    // Verified once, so the node holds it in its cache.
    let r = c.get(0, "/api/v1/whoami", &tok).await;
    assert_eq!(r.status(), StatusCode::OK);
    let out = std::process::Command::new(cluster_tests::signer_bin())
        .args(["token", "revoke", "--config"])
        .arg(&c.node(0).config)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    loop {
        let r = c.get(0, "/api/v1/whoami", &tok).await;
        if r.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the revoked token was still served {:?} after the CLI revoked it",
            started.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The audit trail has the revocation, made by the CLI.
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_log WHERE action = 'token.revoke' AND actor = 'cli' \
         AND subject = $1",
    )
    .bind(&id)
    .fetch_one(&c.db(0).await)
    .await
    .unwrap();
    assert_eq!(n, 1, "the revocation is audited once, by the cli");
}

#[tokio::test]
async fn wrong_role_gets_403() {
    let c = cluster();
    let client = c.client();
    let auditor = create_token("auditor", None).await;
    let r = client
        .post(c.url(0, "/api/v1/tokens"))
        .bearer_auth(&auditor)
        .json(&json!({"name": "x", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let operator = create_token("operator", None).await;
    let r = c.get(0, "/api/v1/audit", &operator).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    // The auditor may read the audit log.
    let r = c.get(0, "/api/v1/audit", &auditor).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_past_the_token_rate_limit_get_429_and_other_tokens_are_unaffected() {
    let c = cluster();
    let client = c.client();
    let limited = create_token("auditor", Some(5)).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = c.get(0, "/api/v1/whoami", &limited).await;
        statuses.push(r.status());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(error_code(r).await.1, "rate_limited");
        }
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited_n = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(ok, 5, "{statuses:?}");
    assert_eq!(limited_n, 3, "{statuses:?}");
    // X-Forwarded-For does not reset the limit: it is keyed on the token.
    let r = client
        .get(c.url(0, "/api/v1/whoami"))
        .bearer_auth(&limited)
        .header("X-Forwarded-For", "10.9.8.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = client
        .get(c.url(0, "/api/v1/whoami"))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_json_wrong_fields_and_oversized_bodies_get_4xx_with_codes() {
    let c = cluster();
    let client = c.client();
    let url = c.url(0, "/api/v1/tokens");
    let r = post_tokens(&client, &url, c.admin(), "application/json", "{\"name\": ").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "malformed_json".into())
    );
    let r = client
        .post(&url)
        .bearer_auth(c.admin())
        .json(&json!({"name": "x", "role": "emperor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request".into())
    );
    let r = post_tokens(&client, &url, c.admin(), "text/plain", "{}").await;
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );
    let big = format!(
        "{{\"name\": \"{}\", \"role\": \"auditor\"}}",
        "a".repeat(1536 * 1024)
    );
    let r = post_tokens(&client, &url, c.admin(), "application/json", big).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    // A body far over the limit is refused before it is read (the connection may be
    // cut mid-upload); nothing is stored and the node keeps serving.
    let huge = vec![b'a'; 16 * 1024 * 1024];
    let r = c
        .client()
        .post(&url)
        .bearer_auth(c.admin())
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(
            error_code(r).await,
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
        );
    }
    // The server closes a connection whose body it refused to read; use a fresh one.
    let client = c.client();
    let r = client
        .get(c.url(0, "/api/v1/nope"))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    // Nothing half-written: no token named with the huge string exists.
    let v: Value = client
        .get(&url)
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["name"].as_str().unwrap().len() < 100));
}

#[tokio::test]
async fn token_secrets_are_stored_only_as_keyed_hashes() {
    let c = cluster();
    let tok = create_token("operator", None).await;
    let secret = tok.rsplit_once('_').unwrap().1.to_owned();
    let db = c.db(0).await;
    let rows: Vec<(String,)> = sqlx::query_as("SELECT secret_hash FROM api_tokens")
        .fetch_all(&db)
        .await
        .unwrap();
    // Keyed (HMAC-SHA-256 under the node's sealed token key): tokens made through the
    // API from the start, the `cluster up` admin token since its first use.
    assert!(
        rows.iter().all(|r| r.0.starts_with("hmac-sha256$v1$")),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| !r.0.contains(&secret)));
    // The audit trail names the token id, never its secret.
    let audit: Vec<(String,)> = sqlx::query_as("SELECT details::text FROM audit_log")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(audit.iter().all(|r| !r.0.contains(&secret)));
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(!log.contains(&secret), "node log contains a token secret");
}

#[tokio::test]
async fn audit_chain_verifies_and_an_edited_row_makes_it_fail() {
    let c = cluster();
    let client = c.client();
    // Mutations are audited.
    let _ = create_token("approver", None).await;
    let v: Value = client
        .get(c.url(0, "/api/v1/audit/verify"))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["verified_records"].as_i64().unwrap() >= 2);
    let audit: Value = client
        .get(c.url(0, "/api/v1/audit?limit=1000"))
        .bearer_auth(c.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"node.start") && actions.contains(&"token.create"),
        "{actions:?}"
    );

    // Tamper as the database superuser, bypassing the append-only trigger.
    // This test runs last in its own cluster database copy: it uses a fresh cluster.
    let tamper = Cluster::start(1, 1);
    let su = tamper.db_superuser(0).await;
    let mut conn = su.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1")
        .execute(&mut *conn)
        .await
        .unwrap();
    let v: Value = tamper
        .client()
        .get(tamper.url(0, "/api/v1/audit/verify"))
        .bearer_auth(tamper.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["valid"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("record 1 was altered"),
        "{v}"
    );
    // The CLI says the same, with a non-zero exit.
    let out = std::process::Command::new(cluster_tests::signer_bin())
        .args(["audit", "verify", "--config"])
        .arg(&tamper.node(0).config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID"));
}
