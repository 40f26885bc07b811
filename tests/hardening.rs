//! Issue 16: the node fails closed. Published test primes are refused off regtest
//! (finding 2), custody stays sealed in an unhardened process unless the dev
//! override is set (finding 3), and the operators' `signer` binary ignores fault
//! injection (finding 10).
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use cluster_tests::{plain_signer_bin, signer_bin, Cluster};
use serde_json::Value;

async fn ready(c: &Cluster, i: usize) -> Option<(u16, Value)> {
    let r = c.client().get(c.url(i, "/ready")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

async fn audit_count(c: &Cluster, i: usize, action: &str) -> i64 {
    let db = c.db(i).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_primes_are_refused_off_regtest_and_fixtures_feed_only_regtest() {
    let c = Cluster::start(1, 1);
    c.wait_ready(1).await;
    // The dev config carries `[aux] insecure_test_primes`; on any other network the
    // node process refuses to start, naming the rule.
    for net in ["testnet", "signet", "bitcoin"] {
        let out = Command::new(signer_bin())
            .args(["node", "run", "--config"])
            .arg(&c.node(0).config)
            .env("SIGNER__WALLET__NETWORK", net)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{net}: the node started");
        assert!(
            stderr.contains("aux.insecure_test_primes is allowed only on regtest"),
            "{net}: {stderr}"
        );
    }
    // Without test primes, the same node on bitcoin is refused for its SoftHSM token
    // unless the risk is acknowledged.
    let text = std::fs::read_to_string(&c.node(0).config).unwrap();
    let no_primes: String = text
        .lines()
        .filter(|l| !l.starts_with("insecure_test_primes"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mainnet = c.node(0).config.with_file_name("mainnet.toml");
    std::fs::write(&mainnet, &no_primes).unwrap();
    let out = Command::new(signer_bin())
        .args(["node", "run", "--config"])
        .arg(&mainnet)
        .env("SIGNER__WALLET__NETWORK", "bitcoin")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "softhsm on bitcoin: the node started"
    );
    assert!(
        stderr.contains("accept_software_token_on_bitcoin"),
        "softhsm on bitcoin: {stderr}"
    );
    // Fixture sets already in a pool are never handed to a node of another network.
    // (The node imports them in the background once unsealed.)
    let pool = c.db(0).await;
    c.eventually("fixture sets imported", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM prime_pool WHERE source = 'test_fixture' AND state = 'available'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;
    let store = signer::store::Store::connect(&c.node(0).database_url, 2)
        .await
        .unwrap();
    let ceremony = uuid::Uuid::new_v4();
    let taken = store
        .take_prime_set("node-1", ceremony, false)
        .await
        .unwrap();
    assert!(taken.is_none(), "a fixture set was taken off regtest");
    let taken = store
        .take_prime_set("node-1", ceremony, true)
        .await
        .unwrap();
    assert_eq!(taken.unwrap().source, "test_fixture");
}

/// `setpriv` drops CAP_IPC_LOCK from the bounding set (we may run as root) and
/// `prlimit` sets RLIMIT_MEMLOCK to 0, so `mlockall` cannot lock the node's memory.
fn unhardened_launcher() -> Vec<OsString> {
    vec![
        "setpriv".into(),
        "--bounding-set=-ipc_lock".into(),
        "prlimit".into(),
        "--memlock=0:0".into(),
        signer_bin().into_os_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhardened_node_stays_sealed_unless_the_dev_override_is_set() {
    let c = Cluster::start(1, 1);
    let (status, v) = c
        .eventually("unsealed", Duration::from_secs(60), || async {
            ready(&c, 0)
                .await
                .filter(|(_, v)| v["custody"]["state"] == "unsealed")
        })
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hardening"]["state"], "hardened", "{v}");
    assert_eq!(v["hardening"]["memory_locked"], true, "{v}");

    // Memory cannot be locked and the override is off: sealed, with the reason.
    c.kill_node(0);
    c.restart_node_with(
        0,
        &unhardened_launcher(),
        &[("SIGNER__HARDENING__ALLOW_UNHARDENED_MEMORY", "false")],
    );
    let (status, v) = c
        .eventually("sealed as unhardened", Duration::from_secs(60), || async {
            ready(&c, 0)
                .await
                .filter(|(_, v)| v["custody"]["code"] == "unhardened_process")
        })
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["custody"]["state"], "sealed", "{v}");
    assert_eq!(v["hardening"]["state"], "refused", "{v}");
    assert_eq!(v["hardening"]["memory_locked"], false, "{v}");
    assert_eq!(v["memory"]["locked_kib"], 0, "{v}");
    assert_eq!(audit_count(&c, 0, "custody.refused_unhardened").await, 1);
    // It stays sealed: no later unseal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = ready(&c, 0).await.unwrap();
    assert_eq!(v["custody"]["state"], "sealed", "{v}");

    // The same process limits with the dev override (as `cluster up` writes it):
    // unsealed, reported as overridden, and audited.
    c.kill_node(0);
    c.restart_node_with(0, &unhardened_launcher(), &[]);
    let (status, v) = c
        .eventually(
            "unsealed with the override",
            Duration::from_secs(60),
            || async {
                ready(&c, 0)
                    .await
                    .filter(|(_, v)| v["custody"]["state"] == "unsealed")
            },
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hardening"]["state"], "overridden", "{v}");
    assert_eq!(v["memory"]["locked_kib"], 0, "{v}");
    assert_eq!(audit_count(&c, 0, "custody.unhardened_override").await, 1);
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log.contains("allow_unhardened_memory is set"),
        "no warning logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_signer_binary_ignores_fault_injection() {
    let plain = plain_signer_bin();
    let c = Cluster::start(2, 2);
    c.wait_ready(2).await;
    // node-2 restarted with the operators' binary and a corruption fault that makes
    // `signer-faulty` fail every FROST ceremony (tests/byzantine.rs).
    c.kill_node(1);
    let log_before = std::fs::read_to_string(&c.node(1).log)
        .unwrap_or_default()
        .len();
    c.restart_node_with(
        1,
        &[plain.into_os_string()],
        &[("SIGNER_FAULT_CORRUPT_OUTGOING", "frost")],
    );
    c.wait_ready(2).await;
    let log = std::fs::read_to_string(&c.node(1).log).unwrap();
    let since_restart = &log[log_before.min(log.len())..];
    assert!(
        since_restart.contains("fault injection variables ignored"),
        "{since_restart}"
    );
    assert!(!since_restart.contains("FAULT INJECTION ARMED"));
    // The ceremony completes on both nodes: nothing was corrupted.
    let key = c.dkg(2, "frost", 2).await;
    assert!(!key.is_empty());
    let db = c.db(0).await;
    let violations: i64 = sqlx::query_scalar("SELECT count(*) FROM byzantine_violations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(violations, 0);
}
