//! Key ceremonies on a real cluster (PostgreSQL, etcd, SoftHSM tokens, node
//! processes talking QUIC): CGGMP24 and FROST DKG, shares stored only as
//! envelopes and reloaded after a restart, refusals, and a participant that dies
//! at the start of a ceremony.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::time::Duration;

use cluster_tests::Cluster;
use serde_json::{json, Value};

async fn get(c: &Cluster, i: usize, path: &str) -> Option<Value> {
    c.get_ok(i, path).await
}

async fn start_dkg(c: &Cluster, i: usize, body: Value) -> (u16, Value) {
    c.post_json(i, "/api/v1/dkg/start", &body).await
}

async fn wait_ready(c: &Cluster, n: usize) {
    c.wait_ready(n).await;
}

/// Waits until ceremony `id` has ended (`completed` or `failed`) on node `i`.
async fn wait_ended(c: &Cluster, i: usize, id: &str, within: Duration) -> Value {
    c.eventually(
        &format!("ceremony {id} to end on node {i}"),
        within,
        || async {
            get(c, i, &format!("/api/v1/dkg/ceremonies/{id}"))
                .await
                .filter(|v| v["state"] == "completed" || v["state"] == "failed")
        },
    )
    .await
}

/// Runs a ceremony over all `n` nodes and returns (ceremony id, public key hex)
/// after checking that every node completed with the same key.
async fn dkg_completes_everywhere(
    c: &Cluster,
    n: usize,
    protocol: &str,
    t: u16,
) -> (String, String) {
    let (status, v) = start_dkg(c, 0, json!({"protocol": protocol, "threshold": t})).await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    assert_eq!(v["participants"].as_array().unwrap().len(), n, "{v}");
    let mut keys = Vec::new();
    for i in 0..n {
        let v = wait_ended(c, i, &id, Duration::from_secs(45)).await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
        assert_eq!(v["protocol"], protocol, "{v}");
        assert_eq!(v["t"], t, "{v}");
        assert_eq!(v["n"], n, "{v}");
        keys.push(v["public_key"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys[0].len(), 66, "compressed secp256k1 key: {}", keys[0]);
    assert!(keys.iter().all(|k| *k == keys[0]), "keys differ: {keys:?}");
    (id, keys[0].clone())
}

/// Checks the watch-only descriptor against the public key and the first
/// receive address, with the `bitcoin` crate.
fn check_descriptor(entry: &Value, public_key_hex: &str) {
    use bitcoin::bip32::{ChildNumber, Xpub};
    let (desc, sum) = entry["descriptor"]
        .as_str()
        .unwrap()
        .split_once('#')
        .expect("descriptor carries a BIP-380 checksum");
    assert_eq!(sum.len(), 8, "{entry}");
    let (wrapper, inner) = desc.split_once('(').unwrap();
    let inner = inner.strip_suffix(')').unwrap();
    let (origin, rest) = inner.split_once(']').unwrap();
    let xpub_str = rest.strip_suffix("/<0;1>/*").unwrap();
    let xpub = Xpub::from_str(xpub_str).unwrap();
    assert_eq!(&origin[1..], xpub.fingerprint().to_string());
    assert_eq!(hex::encode(xpub.public_key.serialize()), public_key_hex);
    let secp = bitcoin::secp256k1::Secp256k1::verification_only();
    let child = xpub
        .derive_pub(
            &secp,
            &[
                ChildNumber::Normal { index: 0 },
                ChildNumber::Normal { index: 0 },
            ],
        )
        .unwrap();
    let addr = match wrapper {
        "wpkh" => {
            assert_eq!(entry["key_type"], "ecdsa");
            bitcoin::Address::p2wpkh(
                &bitcoin::CompressedPublicKey(child.public_key),
                bitcoin::Network::Regtest,
            )
        }
        "tr" => {
            assert_eq!(entry["key_type"], "taproot");
            bitcoin::Address::p2tr(
                &secp,
                child.public_key.x_only_public_key().0,
                None,
                bitcoin::Network::Regtest,
            )
        }
        other => panic!("unexpected descriptor {other}"),
    };
    assert_eq!(entry["first_address"], addr.to_string(), "{entry}");
}

/// Every node's `key_shares` row for `key_id` is one non-usable-then-usable
/// envelope: CENV magic, and it does not contain the public key (which every
/// serialized share embeds) in any form.
async fn check_share_rows(c: &Cluster, n: usize, key_id: &str, public_key_hex: &str) {
    let pk = hex::decode(public_key_hex).unwrap();
    for i in 0..n {
        let db = c.db(i).await;
        let rows: Vec<(String, Vec<u8>, Vec<u8>, bool)> = sqlx::query_as(
            "SELECT node_id, public_key, envelope, usable FROM key_shares WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_all(&db)
        .await
        .unwrap();
        db.close().await;
        assert_eq!(rows.len(), 1, "node {i}");
        let (node_id, row_pk, envelope, usable) = &rows[0];
        assert_eq!(node_id, &c.node(i).id);
        assert_eq!(row_pk, &pk);
        assert!(usable, "node {i}");
        assert_eq!(&envelope[..4], b"CENV", "node {i}");
        assert!(
            !envelope
                .windows(16)
                .any(|w| pk[1..].windows(16).any(|p| p == w)),
            "node {i}: envelope contains the public key: not encrypted"
        );
    }
}

/// Opens node-1's envelope of `key_id` with node-1's own SoftHSM token (as an
/// auditor with access to the HSM would) and checks that the stored envelope holds
/// none of the plaintext share.
async fn check_envelope_opens_only_with_the_token(
    c: &Cluster,
    key_id: &str,
    kind: hsm::RecordKind,
) {
    let db = c.db(0).await;
    let (envelope,): (Vec<u8>,) =
        sqlx::query_as("SELECT envelope FROM key_shares WHERE key_id = $1 AND node_id = 'node-1'")
            .bind(key_id)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    std::env::set_var("SOFTHSM2_CONF", c.node(0).dir.join("softhsm/softhsm2.conf"));
    let cfg = hsm::CustodyConfig::Pkcs11(hsm::pkcs11::Pkcs11Config {
        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: "node-1".into(),
        kek_label: "signer-kek".into(),
        pin: hsm::PinSource::File(c.node(0).dir.join("softhsm/user.pin")),
    });
    let custody = hsm::Custody::open(&cfg).unwrap();
    let aad = hsm::Aad::new("node-1", key_id, kind).unwrap();
    let plain = custody.open_record(&aad, &envelope).unwrap();
    let plain = plain.expose_secret();
    assert!(plain.len() > 64, "share too short: {}", plain.len());
    assert!(
        !envelope
            .windows(16)
            .any(|w| plain.windows(16).any(|p| p == w)),
        "envelope contains plaintext share bytes"
    );
    // Bound to its record: the same envelope does not open as another key.
    let other = hsm::Aad::new("node-1", "another-key", kind).unwrap();
    assert!(custody.open_record(&other, &envelope).is_err());
}

#[tokio::test]
async fn dkg_for_both_key_types_on_2_of_3_gives_every_node_the_same_sealed_key_that_survives_a_restart(
) {
    let c = Cluster::start(3, 2);
    wait_ready(&c, 3).await;

    // Refused before anything starts.
    for (body, code) in [
        (
            json!({"protocol": "cggmp24", "threshold": 1}),
            "invalid_threshold",
        ),
        (
            json!({"protocol": "frost", "threshold": 4}),
            "invalid_threshold",
        ),
        (
            json!({"protocol": "frost", "threshold": -2}),
            "invalid_threshold",
        ),
        (
            json!({"protocol": "frost", "threshold": 2, "participants": ["node-1", "node-1", "node-2"]}),
            "invalid_participants",
        ),
        (
            json!({"protocol": "frost", "threshold": 2, "participants": ["node-1", "node-9"]}),
            "invalid_participants",
        ),
    ] {
        let (status, v) = start_dkg(&c, 1, body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
    }

    let (ecdsa_id, ecdsa_pk) = dkg_completes_everywhere(&c, 3, "cggmp24", 2).await;
    let (frost_id, frost_pk) = dkg_completes_everywhere(&c, 3, "frost", 2).await;
    assert_ne!(ecdsa_pk, frost_pk);
    check_share_rows(&c, 3, &ecdsa_id, &ecdsa_pk).await;
    check_share_rows(&c, 3, &frost_id, &frost_pk).await;
    check_envelope_opens_only_with_the_token(&c, &ecdsa_id, hsm::RecordKind::KeyShare).await;
    check_envelope_opens_only_with_the_token(&c, &frost_id, hsm::RecordKind::FrostKeyShare).await;

    // Every node lists both keys with the same descriptor and address.
    for (id, pk, key_type) in [
        (&ecdsa_id, &ecdsa_pk, "ecdsa"),
        (&frost_id, &frost_pk, "taproot"),
    ] {
        let first = c.key_entry(0, id).await;
        assert_eq!(first["key_type"], key_type, "{first}");
        assert_eq!(first["t"], 2);
        assert_eq!(first["n"], 3);
        assert_eq!(first["share_loaded"], true);
        check_descriptor(&first, pk);
        for i in 1..3 {
            let e = c.key_entry(i, id).await;
            assert_eq!(e["descriptor"], first["descriptor"], "node {i}");
            assert_eq!(e["first_address"], first["first_address"], "node {i}");
        }
    }

    // A restarted node unseals and validates its shares again.
    c.kill_node(2);
    c.restart_node(2);
    wait_ready(&c, 3).await;
    let v = c
        .eventually(
            "node-3 reloads its shares",
            Duration::from_secs(30),
            || async {
                get(&c, 2, "/api/v1/keys")
                    .await
                    .filter(|v| v["loaded_shares"] == 2)
            },
        )
        .await;
    for (id, pk) in [(&ecdsa_id, &ecdsa_pk), (&frost_id, &frost_pk)] {
        let e = c.key_entry(2, id).await;
        assert_eq!(e["share_loaded"], true, "{v}");
        assert_eq!(&e["public_key"], pk.as_str());
        check_descriptor(&e, pk);
    }
    let log = std::fs::read_to_string(&c.node(2).log).unwrap();
    assert!(
        log.contains("key shares reloaded from custody"),
        "no reload logged"
    );
}

#[tokio::test]
async fn dkg_is_refused_while_a_participant_is_down_fails_cleanly_when_one_dies_and_a_retry_succeeds(
) {
    let c = Cluster::start(3, 2);
    wait_ready(&c, 3).await;

    // A participant stalls right as the ceremony starts (SIGSTOP): it is still
    // registered and connected, so the start is accepted, but it never reaches the
    // barrier; then it dies. The others end the ceremony as failed within the
    // bounded timeout.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(c.node_pid(2).unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (status, v) = start_dkg(&c, 0, json!({"protocol": "frost", "threshold": 2})).await;
    c.kill_node(2);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["announce_failed"], json!(["node-3"]), "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let v = wait_ended(&c, i, &id, Duration::from_secs(45)).await;
        assert_eq!(v["state"], "failed", "node {i}: {v}");
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("node-3"),
            "node {i}: failure should name node-3: {err}"
        );
    }
    // No share of the failed ceremony is usable anywhere.
    for i in 0..2 {
        let db = c.db(i).await;
        let (usable,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM key_shares WHERE usable AND key_id = $1")
                .bind(&id)
                .fetch_one(&db)
                .await
                .unwrap();
        db.close().await;
        assert_eq!(usable, 0, "node {i}");
    }

    // Once its death is visible, a ceremony that needs it is refused up front.
    c.eventually("node-3 seen down", Duration::from_secs(20), || async {
        get(&c, 0, "/api/v1/cluster/status")
            .await
            .filter(|s| s["healthy_nodes"] == 2)
    })
    .await;
    let (status, v) = start_dkg(&c, 0, json!({"protocol": "cggmp24", "threshold": 2})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "participants_unavailable", "{v}");
    assert!(v["message"].as_str().unwrap().contains("node-3"), "{v}");

    // The remaining nodes alone can still make a 2-of-2 key.
    let (status, v) = start_dkg(
        &c,
        1,
        json!({"protocol": "cggmp24", "threshold": 2, "participants": ["node-2", "node-1"]}),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let pair_id = v["ceremony_id"].as_str().unwrap().to_owned();
    assert_eq!(v["participants"], json!(["node-1", "node-2"]));
    for i in 0..2 {
        let v = wait_ended(&c, i, &pair_id, Duration::from_secs(45)).await;
        assert_eq!(v["state"], "completed", "node {i}: {v}");
    }

    // Restarted, the node takes part again: the retry with a new id succeeds.
    c.restart_node(2);
    wait_ready(&c, 3).await;
    let (retry_id, _) = dkg_completes_everywhere(&c, 3, "frost", 2).await;
    assert_ne!(retry_id, id);
}

#[tokio::test]
async fn dkg_for_both_key_types_on_3_of_5_completes_on_every_node_and_shows_in_status() {
    let c = Cluster::start(5, 3);
    wait_ready(&c, 5).await;
    let (ecdsa_id, ecdsa_pk) = dkg_completes_everywhere(&c, 5, "cggmp24", 3).await;
    let (frost_id, frost_pk) = dkg_completes_everywhere(&c, 5, "frost", 3).await;
    check_share_rows(&c, 5, &ecdsa_id, &ecdsa_pk).await;
    check_share_rows(&c, 5, &frost_id, &frost_pk).await;
    for i in 0..5 {
        let v = get(&c, i, "/api/v1/dkg/status").await.unwrap();
        let list = v["ceremonies"].as_array().unwrap();
        for (id, pk) in [(&ecdsa_id, &ecdsa_pk), (&frost_id, &frost_pk)] {
            let row = list
                .iter()
                .find(|r| r["id"] == id.as_str())
                .unwrap_or_else(|| panic!("node {i} lacks {id}: {v}"));
            assert_eq!(row["state"], "completed", "{row}");
            assert_eq!(row["t"], 3, "{row}");
            assert_eq!(row["n"], 5, "{row}");
            assert_eq!(&row["public_key"], pk.as_str(), "{row}");
        }
        for (id, pk) in [(&ecdsa_id, &ecdsa_pk), (&frost_id, &frost_pk)] {
            let e = c.key_entry(i, id).await;
            assert_eq!(e["t"], 3);
            assert_eq!(e["n"], 5);
            check_descriptor(&e, pk);
        }
    }
}

#[tokio::test]
async fn a_sealed_node_refuses_to_join_and_the_ceremony_fails_on_every_node() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(3, 2);
    wait_ready(&c, 3).await;
    // node-3 restarts with a wrong PIN: registered and connected, but sealed.
    let wrong_pin = c.dir.join("wrong.pin");
    std::fs::write(&wrong_pin, "not-the-pin").unwrap();
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.kill_node(2);
    c.restart_node_with_env(
        2,
        &[("SIGNER__CUSTODY__PIN_FILE", wrong_pin.to_str().unwrap())],
    );
    c.eventually("node-3 up but sealed", Duration::from_secs(60), || async {
        let r = c.client().get(c.url(2, "/ready")).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        let sealed = v["custody"]["state"] == "sealed" && v["peers_connected"] == 2;
        let healthy = get(&c, 0, "/api/v1/cluster/status")
            .await
            .is_some_and(|s| s["healthy_nodes"] == 3);
        let connected = c
            .client()
            .get(c.url(0, "/ready"))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
            .is_some_and(|v| v["peers_connected"] == 2);
        (sealed && healthy && connected).then_some(())
    })
    .await;

    // Started on node-3 itself: refused up front.
    let (status, v) = start_dkg(&c, 2, json!({"protocol": "cggmp24", "threshold": 2})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], "custody_sealed", "{v}");

    // Started elsewhere: node-3 records the ceremony as failed because it is sealed,
    // the others fail at the barrier naming node-3; no share is usable anywhere.
    let (status, v) = start_dkg(&c, 0, json!({"protocol": "cggmp24", "threshold": 2})).await;
    assert_eq!(status, 202, "{v}");
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    let sealed_view = c
        .eventually(
            "node-3 records the refusal",
            Duration::from_secs(30),
            || async {
                let db = c.db(2).await;
                let row: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT state, error FROM dkg_ceremonies WHERE id = $1::uuid")
                        .bind(&id)
                        .fetch_optional(&db)
                        .await
                        .unwrap();
                db.close().await;
                row.filter(|(state, _)| state == "failed")
            },
        )
        .await;
    assert!(
        sealed_view
            .1
            .as_deref()
            .unwrap_or_default()
            .contains("sealed"),
        "{sealed_view:?}"
    );
    for i in 0..2 {
        let v = wait_ended(&c, i, &id, Duration::from_secs(45)).await;
        assert_eq!(v["state"], "failed", "node {i}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("node-3"),
            "node {i}: {v}"
        );
    }
    for i in 0..3 {
        let db = c.db(i).await;
        let (shares,): (i64,) = sqlx::query_as("SELECT count(*) FROM key_shares WHERE usable")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        assert_eq!(shares, 0, "node {i}");
    }
}

/// `signer dkg start --wait --retry-secs` starts a new ceremony when one failed on
/// coordination: a participant not ready for the ceremony's barrier, as right after
/// `cluster up` (the front door: a `make demo` run failed that way with
/// "coordination: barrier timed out waiting for: node-5"). Here node-3 is frozen
/// (SIGSTOP) for 24 s from just before the start; the first ceremony fails on its
/// barrier, and the command starts another one that completes once node-3 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_start_with_a_retry_window_starts_again_after_a_coordination_failure() {
    let c = Cluster::start(3, 2);
    wait_ready(&c, 3).await;
    let pid = c.node_pid(2).unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let resume = {
        let pid = pid.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(24));
            std::process::Command::new("kill")
                .args(["-CONT", &pid])
                .status()
                .unwrap();
        })
    };
    let file = c.dir.join("cluster.json");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(cluster_tests::signer_bin())
            .args(["dkg", "start", "--cluster"])
            .arg(&file)
            .args(["--protocol", "taproot", "--threshold", "2", "--wait"])
            .args(["--retry-secs", "120", "--timeout-secs", "120"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    resume.join().unwrap();
    signal("-CONT");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("coordination: barrier timed out")
            && stderr.contains("starting a new ceremony"),
        "the first ceremony failed on its barrier and a new one was started: {stderr}"
    );
    assert!(stdout.contains("completed"), "{stdout}");
}
