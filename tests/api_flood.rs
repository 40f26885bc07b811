//! Issue 16, finding 1: a flood of requests naming known token ids with wrong
//! secrets, from one address, costs the node little: every one gets 401 or 429,
//! the client address's budget is spent before any verification runs, memory stays
//! bounded, and a valid token keeps being served meanwhile. Also: tokens are stored
//! as keyed hashes, and enrolment / legacy argon2 hashes are rewritten to the keyed
//! form at their first successful use. Own 1-node cluster (the flood spends the
//! loopback address's unauthenticated budget, which other API tests need).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use argon2::password_hash::{PasswordHasher, SaltString};
use cluster_tests::Cluster;
use futures::StreamExt;
use reqwest::StatusCode;

/// Wrong-secret requests in the flood.
const FLOOD: usize = 500;
/// Of which this many name a legacy (argon2) token that was never used.
const FLOOD_LEGACY: usize = 100;
/// Flood requests in flight at once.
const FLOOD_CONCURRENCY: usize = 32;
/// Bound on the node's resident memory growth over the first flood, KiB: the
/// legacy argon2 buffer (19 MiB, one at a time on one thread), 32 TLS connections
/// and allocator arenas touched for the first time (the node locks all its memory,
/// so every touched page stays resident). Measured: 60 to 100 MiB.
const RSS_GROWTH_BOUND_KIB: u64 = 128 * 1024;
/// Bound on the growth over a second, identical flood, KiB: flooding on does not
/// keep growing the node.
const RSS_SECOND_FLOOD_BOUND_KIB: u64 = 8 * 1024;
/// The loopback address's budget (`api.unauthenticated_rate_limit_per_min`, default).
const UNAUTH_PER_MIN: usize = 120;

const LEGACY_ID: &str = "legacy0000000001";
const LEGACY_UNUSED_ID: &str = "legacy0000000002";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

async fn timed_whoami(c: &Cluster, client: &reqwest::Client, token: &str) -> (StatusCode, f64) {
    let start = Instant::now();
    let r = client
        .get(c.url(0, "/api/v1/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let _ = r.bytes().await;
    (status, start.elapsed().as_secs_f64() * 1000.0)
}

async fn stored_hash(db: &sqlx::PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT secret_hash FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

fn argon2_hash(secret: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_flood_gets_401_or_429_and_a_valid_token_keeps_working() {
    let c = Cluster::start(1, 1);
    c.wait_ready(1).await;
    let db = c.db(0).await;
    let client = c.client();

    // Token forms. The admin token of `cluster up` is stored in the enrolment form
    // and rewritten to the keyed form by its first use (wait_ready used it).
    let admin_id = c.admin().split('_').nth(1).unwrap().to_owned();
    let h = stored_hash(&db, &admin_id).await;
    assert!(h.starts_with("hmac-sha256$v1$"), "{h}");
    // A token created through the API is keyed from the start.
    // (With a rate limit of its own that the measurement does not reach.)
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/tokens",
            &serde_json::json!({"name": "flood-operator", "role": "operator",
                                "rate_limit_per_min": 1_000_000}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let operator = v["token"].as_str().unwrap().to_owned();
    let op_id = operator.split('_').nth(1).unwrap().to_owned();
    assert!(stored_hash(&db, &op_id)
        .await
        .starts_with("hmac-sha256$v1$"));
    // Tokens of earlier versions (argon2id) still work, once, and are rewritten.
    let legacy_secret = "ab".repeat(32);
    for id in [LEGACY_ID, LEGACY_UNUSED_ID] {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, rate_limit_per_min, created_by) \
             VALUES ($1, $1, 'auditor', $2, 100000, 'test')",
        )
        .bind(id)
        .bind(argon2_hash(&legacy_secret))
        .execute(&db)
        .await
        .unwrap();
    }
    let legacy = format!("sgn_{LEGACY_ID}_{legacy_secret}");
    let (status, _) = timed_whoami(&c, &client, &legacy).await;
    assert_eq!(status, StatusCode::OK);
    let h = stored_hash(&db, LEGACY_ID).await;
    assert!(
        h.starts_with("hmac-sha256$v1$"),
        "legacy hash not rewritten: {h}"
    );
    assert!(!h.contains(&legacy_secret));
    // A form the node does not know is refused by the schema.
    let bad = sqlx::query(
        "INSERT INTO api_tokens (id, name, role, secret_hash, created_by) \
         VALUES ('plain00000000001', 'x', 'admin', 'plaintext', 'test')",
    )
    .execute(&db)
    .await;
    assert!(bad.is_err(), "a plaintext secret_hash was accepted");

    // Idle latency of the valid token.
    let mut idle = Vec::new();
    for _ in 0..60 {
        let (status, ms) = timed_whoami(&c, &client, &operator).await;
        assert_eq!(status, StatusCode::OK);
        idle.push(ms);
    }
    let rss_before = c.node_rss_kib(0);

    // The flood: known ids, wrong secrets, one address; meanwhile the valid token.
    let flood_client = c.client();
    let flood = futures::stream::iter(0..FLOOD)
        .map(|k| {
            let client = flood_client.clone();
            let id = if k % (FLOOD / FLOOD_LEGACY) == 0 {
                LEGACY_UNUSED_ID.to_owned()
            } else {
                admin_id.clone()
            };
            let url = c.url(0, "/api/v1/whoami");
            async move {
                let wrong = format!("sgn_{id}_{:064x}", k + 1);
                client
                    .get(url)
                    .bearer_auth(wrong)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect::<Vec<StatusCode>>();
    let flood_done = std::sync::atomic::AtomicBool::new(false);
    let flood = async {
        let statuses = flood.await;
        flood_done.store(true, std::sync::atomic::Ordering::SeqCst);
        statuses
    };
    let flood_started = Instant::now();
    let valid_during = async {
        let mut lat = Vec::new();
        // For as long as the flood lasts, and at least 60 requests.
        while lat.len() < 60 || !flood_done.load(std::sync::atomic::Ordering::SeqCst) {
            let (status, ms) = timed_whoami(&c, &client, &operator).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "valid token refused during the flood"
            );
            lat.push(ms);
            if lat.len() >= 2000 {
                break;
            }
        }
        lat
    };
    let (statuses, mut during) = tokio::join!(flood, valid_during);
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let rss_after = c.node_rss_kib(0);

    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        unauthorized + limited,
        FLOOD,
        "only 401 and 429 expected: {statuses:?}"
    );
    // Only the address's budget (plus what refilled while the flood ran) was
    // verified at all; the rest was refused before any verification.
    let refill = (flood_secs * UNAUTH_PER_MIN as f64 / 60.0).ceil() as usize;
    assert!(
        unauthorized <= UNAUTH_PER_MIN + refill + 1,
        "{unauthorized} wrong secrets were verified (budget {UNAUTH_PER_MIN} + {refill})"
    );
    assert!(limited > 0);
    // The never-used legacy token is still in its argon2 form (no wrong secret
    // rewrote it) and the valid token was never charged to the address.
    assert!(stored_hash(&db, LEGACY_UNUSED_ID)
        .await
        .starts_with("$argon2id$"));
    let growth = rss_after.saturating_sub(rss_before);
    let (idle50, idle99) = (percentile(&mut idle, 0.5), percentile(&mut idle, 0.99));
    let (fl50, fl99) = (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
    println!(
        "flood: {FLOOD} wrong secrets ({FLOOD_LEGACY} naming a legacy argon2 token), \
         concurrency {FLOOD_CONCURRENCY}, {flood_secs:.2} s: {unauthorized} x 401, {limited} x 429"
    );
    println!(
        "valid token latency ms: idle p50 {idle50:.2} p99 {idle99:.2}; during flood p50 {fl50:.2} \
         p99 {fl99:.2} ({} requests); ratio p50 {:.2} p99 {:.2}",
        during.len(),
        fl50 / idle50,
        fl99 / idle99
    );
    println!(
        "node VmRSS KiB: before {rss_before}, after {rss_after}, growth {growth} (bound {RSS_GROWTH_BOUND_KIB})"
    );
    assert!(
        growth < RSS_GROWTH_BOUND_KIB,
        "node RSS grew by {growth} KiB during the flood (bound {RSS_GROWTH_BOUND_KIB})"
    );
    // Latency stays in the same range: a loose bound for a shared 2-core machine;
    // the measured ratios are in docs/BENCHMARKS.md.
    assert!(
        fl50 < (idle50 * 10.0).max(50.0),
        "valid-token median latency {fl50:.2} ms during the flood vs {idle50:.2} ms idle"
    );

    // A second flood, same shape: memory does not keep growing.
    let flood_client = c.client();
    let second: Vec<StatusCode> = futures::stream::iter(0..FLOOD)
        .map(|k| {
            let client = flood_client.clone();
            let url = c.url(0, "/api/v1/whoami");
            let wrong = format!("sgn_{admin_id}_{:064x}", k + 100_000);
            async move {
                client
                    .get(url)
                    .bearer_auth(wrong)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect()
        .await;
    assert!(second
        .iter()
        .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS));
    let rss_second = c.node_rss_kib(0);
    let growth2 = rss_second.saturating_sub(rss_after);
    println!("second flood: node VmRSS KiB {rss_after} -> {rss_second}, growth {growth2} (bound {RSS_SECOND_FLOOD_BOUND_KIB})");
    assert!(
        growth2 < RSS_SECOND_FLOOD_BOUND_KIB,
        "RSS kept growing: {growth2} KiB"
    );
    let (status, _) = timed_whoami(&c, &client, &operator).await;
    assert_eq!(status, StatusCode::OK);

    // Idle connections from one address: at most 256 are held (the flood clients'
    // pooled connections count too); the next is closed at once (long before the
    // 10 s handshake timeout), and once they go the API serves again.
    let addr = c
        .node(0)
        .api_url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    drop((client, flood_client));
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The node admits connections in order: give it a moment to count these.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the 257th connection is closed by the node: {read:?}"
    );
    drop(idle);
    let fresh = c.client();
    let status = c
        .eventually(
            "the API serves again",
            std::time::Duration::from_secs(10),
            || async {
                let r = fresh
                    .get(c.url(0, "/api/v1/whoami"))
                    .bearer_auth(&operator)
                    .send()
                    .await
                    .ok()?;
                Some(r.status())
            },
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Wrong secrets are never logged.
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(!log.contains(&format!("{:064x}", 1)));
    assert!(!log.contains(&legacy_secret));
}
