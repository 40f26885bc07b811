//! Issue 16: the node fails closed. Published test primes are refused off regtest
//! (finding 2), custody stays sealed in an unhardened process unless the dev
//! override is set (finding 3), a TPM custody needs a storage-key auth value and a
//! pinned key name off regtest and refuses a key with another name (finding 5),
//! and the operators' `signer` binary ignores fault injection (finding 10).
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use cluster_tests::tpm::{with_custody, Swtpm};
use cluster_tests::{plain_signer_bin, signer_bin, signer_with_config as signer, Cluster};
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
        .eventually("unsealed and ready", Duration::from_secs(60), || async {
            ready(&c, 0)
                .await
                .filter(|(s, v)| *s == 200 && v["custody"]["state"] == "unsealed")
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
            "unsealed with the override and ready",
            Duration::from_secs(60),
            || async {
                ready(&c, 0)
                    .await
                    .filter(|(s, v)| *s == 200 && v["custody"]["state"] == "unsealed")
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

/// The name `signer hsm init` / `check` print: `key_name = "<hex>"`.
fn printed_key_name(output: &str) -> String {
    let rest = output
        .split("key_name = \"")
        .nth(1)
        .unwrap_or_else(|| panic!("no key_name printed:\n{output}"));
    rest.split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_custody_needs_key_auth_and_a_pinned_name_off_regtest_and_refuses_another_key() {
    const OTHER_NAME: &str = "000b0000000000000000000000000000000000000000000000000000000000000000";
    let tpm = Swtpm::start();
    let c = Cluster::start(1, 1);
    c.wait_ready(1).await;
    let node_config = c.node(0).config.clone();
    // Without the test primes (refused off regtest).
    let plain: String = std::fs::read_to_string(&node_config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("insecure_test_primes"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dev = with_custody(
        &plain,
        &format!("[custody]\nbackend = \"tpm\"\ntcti = \"{}\"\n", tpm.tcti),
    );
    let tpm_config = node_config.with_file_name("tpm.toml");
    std::fs::write(&tpm_config, &dev).unwrap();

    // Development (regtest): `signer hsm init` creates the storage key without an
    // auth value and unpinned, and prints the name to pin.
    let (ok, out) = signer(&["hsm", "init"], &tpm_config, &[]);
    assert!(ok, "hsm init on regtest: {out}");
    let name = printed_key_name(&out);
    assert!(name.starts_with("000b") && name.len() == 68, "{name}");

    // Off regtest the node does not start without a storage-key auth value, nor
    // with one but without a pinned name.
    let auth = node_config.with_file_name("tpm-key.auth");
    std::fs::write(&auth, "tpm key auth value\n").unwrap();
    std::fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let auth = auth.display().to_string();
    for net in ["testnet", "signet", "bitcoin"] {
        let (ok, out) = signer(
            &["node", "run"],
            &tpm_config,
            &[("SIGNER__WALLET__NETWORK", net)],
        );
        assert!(!ok, "{net} without key auth: the node started");
        assert!(
            out.contains("without a storage key auth value"),
            "{net}: {out}"
        );
        let (ok, out) = signer(
            &["node", "run"],
            &tpm_config,
            &[
                ("SIGNER__WALLET__NETWORK", net),
                ("SIGNER__CUSTODY__KEY_AUTH_FILE", &auth),
            ],
        );
        assert!(!ok, "{net} unpinned: the node started");
        assert!(out.contains("custody.key_name must pin"), "{net}: {out}");
    }
    // The production path on bitcoin: `hsm init` with an auth value (a second key)
    // runs unpinned and prints the name; `hsm check` with that name pinned passes.
    let prod = [
        ("SIGNER__WALLET__NETWORK", "bitcoin"),
        ("SIGNER__CUSTODY__KEY_AUTH_FILE", auth.as_str()),
        ("SIGNER__CUSTODY__PERSISTENT_HANDLE", "0x81010021"),
    ];
    let (ok, out) = signer(&["hsm", "init"], &tpm_config, &prod);
    assert!(ok, "hsm init on bitcoin with auth: {out}");
    let prod_name = printed_key_name(&out);
    assert_ne!(prod_name, name);
    let (ok, out) = signer(&["hsm", "check"], &tpm_config, &prod);
    assert!(ok && out.contains("NOT PINNED"), "{out}");
    let mut pinned = prod.to_vec();
    pinned.push(("SIGNER__CUSTODY__KEY_NAME", prod_name.as_str()));
    let (ok, out) = signer(&["hsm", "check"], &tpm_config, &pinned);
    assert!(ok && out.contains("matches the pinned key_name"), "{out}");
    pinned.pop();
    pinned.push(("SIGNER__CUSTODY__KEY_NAME", name.as_str()));
    let (ok, out) = signer(&["hsm", "check"], &tpm_config, &pinned);
    assert!(
        !ok && out.contains("[FAIL] storage key name") && out.contains(&prod_name),
        "{out}"
    );

    // Regtest runs the node on the TPM without either, with warnings. (Its keys
    // were sealed by the SoftHSM KEK: dropped, so that they are made anew.)
    c.kill_node(0);
    let db = c.db_superuser(0).await;
    sqlx::query("DELETE FROM node_keys")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    std::fs::write(&node_config, &dev).unwrap();
    c.restart_node(0);
    let (status, v) = c
        .eventually(
            "unsealed on the tpm and ready",
            Duration::from_secs(60),
            || async {
                ready(&c, 0)
                    .await
                    .filter(|(s, v)| *s == 200 && v["custody"]["state"] == "unsealed")
            },
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let kek = v["custody"]["kek_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(kek, format!("tpm:81010020:{}", &name[4..20]), "{v}");
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log.contains("tpm storage key name not pinned"),
        "no unpinned warning"
    );
    assert!(
        log.contains("tpm storage key without an auth value"),
        "no missing-auth warning"
    );

    // A pinned name that is not the key's: custody refused with its own code.
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__CUSTODY__KEY_NAME", OTHER_NAME)]);
    let (status, v) = c
        .eventually(
            "sealed for the key name",
            Duration::from_secs(60),
            || async {
                ready(&c, 0)
                    .await
                    .filter(|(_, v)| v["custody"]["code"] == "tpm_key_name_mismatch")
            },
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["custody"]["state"], "sealed", "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, v) = ready(&c, 0).await.unwrap();
    assert_eq!(v["custody"]["code"], "tpm_key_name_mismatch", "{v}");

    // The right name: unsealed again, with the same key.
    c.kill_node(0);
    c.restart_node_with_env(0, &[("SIGNER__CUSTODY__KEY_NAME", name.as_str())]);
    let (_, v) = c
        .eventually("unsealed pinned", Duration::from_secs(60), || async {
            ready(&c, 0)
                .await
                .filter(|(_, v)| v["custody"]["state"] == "unsealed")
        })
        .await;
    assert_eq!(v["custody"]["kek_id"], kek, "{v}");
}
