//! Key custody in a running node (real SoftHSM2 token per node): sealed start,
//! memory hardening, and no plaintext secret in the database or the logs.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use cluster_tests::Cluster;
use serde_json::Value;

async fn ready(c: &Cluster) -> Option<(u16, Value)> {
    let r = c.client().get(c.url(0, "/ready")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Waits until the node is unsealed *and* ready: right after a start custody can be
/// unsealed before the node's first etcd probe, when `/ready` still answers 503.
async fn wait_unsealed_and_ready(c: &Cluster) -> Value {
    let (status, v) = c
        .eventually(
            "custody unsealed and ready",
            Duration::from_secs(30),
            || async {
                ready(c)
                    .await
                    .filter(|(s, v)| *s == 200 && v["custody"]["state"] == "unsealed")
            },
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn node_key_rows(c: &Cluster) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = c.db(0).await;
    let rows =
        sqlx::query_as("SELECT public_key, envelope FROM node_keys WHERE purpose = 'vote_signing'")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    rows
}

fn softhsm_conf(c: &Cluster) -> std::path::PathBuf {
    c.node(0).dir.join("softhsm/softhsm2.conf")
}

/// Opens the node's vote-key envelope with the node's own token (as an auditor
/// with access to the HSM would), returning the plaintext secret.
fn unseal_vote_key(c: &Cluster, envelope: &[u8]) -> Vec<u8> {
    std::env::set_var("SOFTHSM2_CONF", softhsm_conf(c));
    let cfg = hsm::CustodyConfig::Pkcs11(hsm::pkcs11::Pkcs11Config {
        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
        token_label: "node-1".into(),
        kek_label: "signer-kek".into(),
        pin: hsm::PinSource::File(c.node(0).dir.join("softhsm/user.pin")),
    });
    let custody = hsm::Custody::open(&cfg).unwrap();
    let aad = hsm::Aad::new("node-1", "vote_signing", hsm::RecordKind::NodeIdentityKey).unwrap();
    custody
        .open_record(&aad, envelope)
        .unwrap()
        .expose_secret()
        .to_vec()
}

/// The private part of ring's Ed25519 PKCS#8 v2 document: the 32-byte seed after
/// the 16-byte header (the document also embeds the public key, which is public).
fn seed(pkcs8: &[u8]) -> &[u8] {
    assert_eq!(&pkcs8[14..16], &[0x04, 0x20], "unexpected pkcs8 layout");
    &pkcs8[16..48]
}

fn encodings(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    // Every 16-byte window of the seed, so a partial leak is caught too.
    for w in seed(secret).windows(16).step_by(4) {
        out.push(hex::encode(w));
        out.push(hex::encode_upper(w));
    }
    out.push(base64::engine::general_purpose::STANDARD.encode(secret));
    out.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    out
}

#[tokio::test]
async fn custody_sealed_start_hardening_and_no_plaintext_at_rest() {
    let c = Cluster::start(1, 1);

    // 1. Unsealed at start: memory locked, not dumpable, core dumps off.
    let v = wait_unsealed_and_ready(&c).await;
    assert!(v["memory"]["locked_kib"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["memory"]["dumpable"], false, "{v}");
    assert_eq!(v["memory"]["core_limit"], 0, "{v}");
    let pid = c.node_pid(0).unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vm_lck: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(vm_lck > 0, "VmLck {vm_lck}");

    // 2. The node's secret key is stored only as an envelope: neither a pg_dump of
    // its database nor its log contains the secret in raw, hex or base64 form.
    let rows = node_key_rows(&c).await;
    assert_eq!(rows.len(), 1);
    let (public_key, envelope) = rows[0].clone();
    let secret = unseal_vote_key(&c, &envelope);
    assert!(secret.len() >= 32);
    let dump = std::process::Command::new(c.file.postgres_bindir.join("pg_dump"))
        .arg("--data-only")
        .arg(format!(
            "{}/{}",
            c.file.postgres_admin_url.rsplit_once('/').unwrap().0,
            c.node(0).database
        ))
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump_text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump_text.contains(&hex::encode(&public_key)),
        "dump should hold the public key"
    );
    assert!(!dump
        .stdout
        .windows(16)
        .any(|w| seed(&secret).windows(16).any(|s| s == w)));
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    for enc in encodings(&secret) {
        assert!(
            !dump_text.contains(&enc),
            "pg_dump contains the secret ({enc})"
        );
        assert!(!log.contains(&enc), "node log contains the secret ({enc})");
    }
    // The PIN is not in the log either.
    let pin = std::fs::read_to_string(c.node(0).dir.join("softhsm/user.pin")).unwrap();
    assert!(!log.contains(pin.trim()));

    // 3. Sealed start: wrong PIN, missing module, missing token. The API answers,
    // /ready says sealed with the reason, and nothing is written.
    let wrong_pin = c.dir.join("wrong.pin");
    std::fs::write(&wrong_pin, "not-the-pin").unwrap();
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong_pin = wrong_pin.to_str().unwrap().to_owned();
    for (key, value, code) in [
        ("SIGNER__CUSTODY__PIN_FILE", wrong_pin.as_str(), "wrong_pin"),
        (
            "SIGNER__CUSTODY__MODULE",
            "/nonexistent/libpkcs11.so",
            "module_not_found",
        ),
        (
            "SIGNER__CUSTODY__TOKEN_LABEL",
            "no-such-token",
            "token_not_found",
        ),
    ] {
        c.kill_node(0);
        c.restart_node_with_env(0, &[(key, value)]);
        let (status, v) = c
            .eventually(
                &format!("sealed with {code}"),
                Duration::from_secs(30),
                || async {
                    ready(&c)
                        .await
                        .filter(|(_, v)| v["custody"]["code"] == code)
                },
            )
            .await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["custody"]["state"], "sealed");
        assert_eq!(v["ready"], false);
        // Only the code: the unauthenticated /ready shows no error text (paths,
        // module names); the log has it.
        assert!(v["custody"].get("reason").is_none(), "{v}");
        assert!(!v.to_string().contains("not-the-pin"), "{v}");
        assert_eq!(
            node_key_rows(&c).await,
            rows,
            "nothing may be written while sealed"
        );
    }

    // `signer hsm check` agrees, with a non-zero exit, and passes on the real config.
    let out = std::process::Command::new(cluster_tests::signer_bin())
        .args(["hsm", "check", "--config"])
        .arg(&c.node(0).config)
        .env("SIGNER__CUSTODY__PIN_FILE", &wrong_pin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = std::process::Command::new(cluster_tests::signer_bin())
        .args(["hsm", "check", "--config"])
        .arg(&c.node(0).config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 4. A normal restart unwraps the same key again.
    c.kill_node(0);
    c.restart_node(0);
    wait_unsealed_and_ready(&c).await;
    assert_eq!(node_key_rows(&c).await, rows);
    let log = std::fs::read_to_string(&c.node(0).log).unwrap();
    assert!(
        log.contains(&hex::encode(&public_key)),
        "restart should load the same vote key"
    );
}
