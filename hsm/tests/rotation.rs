//! KEK rotation: rewrap every record to a new KEK, destroy the old one.

mod common;

use common::SECRET;
use hsm::custody::{self, CustodyConfig};
use hsm::envelope::{self, RotationItem};
use hsm::testing::{SoftHsmToken, Swtpm};
use hsm::tpm::TpmConfig;
use hsm::{Aad, Custody, HsmError, RecordKind};

fn records() -> Vec<(Aad, Vec<u8>)> {
    [
        (RecordKind::KeyShare, "", b"key share one".as_slice()),
        (RecordKind::AuxInfo, "", b"aux info".as_slice()),
        (
            RecordKind::Presignature,
            "presig-1",
            b"presignature 1".as_slice(),
        ),
        (
            RecordKind::Presignature,
            "presig-2",
            b"presignature 2".as_slice(),
        ),
        (RecordKind::NodeIdentityKey, "", SECRET),
    ]
    .into_iter()
    .map(|(kind, rid, pt)| {
        (
            Aad::with_record_id("node-1", "key-1", kind, rid).expect("aad"),
            pt.to_vec(),
        )
    })
    .collect()
}

/// The payload part of a blob: everything after the wrapped key (nonce, length, ciphertext).
fn payload(blob: &[u8]) -> Vec<u8> {
    let info = envelope::inspect(blob).expect("inspect");
    blob[blob.len() - (info.ciphertext_len + 4 + 12)..].to_vec()
}

/// Rewrites the header of `blob` to claim it was wrapped by `kek_id` on `backend`,
/// keeping the old wrapped key and payload (follows the documented v1 layout).
fn forge_kek_id(blob: &[u8], kek_id: &str, backend: u8) -> Vec<u8> {
    let k = blob[8] as usize;
    let mut out = blob[..8].to_vec();
    out[6] = backend;
    out.push(kek_id.len() as u8);
    out.extend_from_slice(kek_id.as_bytes());
    out.extend_from_slice(&blob[9 + k..]);
    out
}

/// Seals all records under `old`, rotates to `new`, destroys `old`, and checks every
/// property of a rotation. `destroy_old` must make `old_cfg` unopenable.
fn rotate_and_destroy(old_cfg: &CustodyConfig, new_cfg: &CustodyConfig) {
    custody::init(old_cfg).expect("init old kek");
    let old = Custody::open(old_cfg).expect("open old");
    let recs = records();
    let items: Vec<RotationItem> = recs
        .iter()
        .map(|(aad, pt)| RotationItem {
            aad: aad.clone(),
            blob: old.seal(aad, pt).expect("seal"),
        })
        .collect();

    let init = custody::init(new_cfg).expect("init new kek");
    assert!(init.created);
    let new = Custody::open(new_cfg).expect("open new");
    assert_ne!(old.kek_id(), new.kek_id());
    for it in &items {
        assert!(envelope::needs_rewrap(new.wrapper().as_ref(), &it.blob).expect("inspect"));
    }

    let rewrapped = envelope::rewrap_all(old.wrapper().as_ref(), new.wrapper().as_ref(), &items)
        .expect("rewrap all");
    assert_eq!(rewrapped.len(), items.len());
    for ((it, blob), (aad, pt)) in items.iter().zip(&rewrapped).zip(&recs) {
        assert!(!envelope::needs_rewrap(new.wrapper().as_ref(), blob).expect("inspect"));
        assert_eq!(
            envelope::inspect(blob).expect("inspect").wrapped.kek_id,
            new.kek_id()
        );
        // The payload was not re-encrypted: only the wrapped data key changed.
        assert_eq!(payload(blob), payload(&it.blob));
        assert_eq!(
            new.open_record(aad, blob)
                .expect("open rewrapped")
                .expose_secret(),
            pt.as_slice()
        );
        // Rewrapping again is a no-op (an interrupted rotation can be rerun).
        let again = envelope::rewrap(old.wrapper().as_ref(), new.wrapper().as_ref(), aad, blob)
            .expect("rerun");
        assert_eq!(&again, blob);
    }
    // The new KEK does not open old-format (old-KEK) blobs.
    for it in &items {
        assert!(matches!(
            new.open_record(&it.aad, &it.blob),
            Err(HsmError::KekMismatch { .. })
        ));
    }

    drop(old);
    custody::destroy_kek(old_cfg).expect("destroy old kek");

    let err = Custody::open(old_cfg).expect_err("old kek is gone");
    assert!(
        matches!(
            err,
            HsmError::KekNotFound { .. } | HsmError::TpmKeyNotFound { .. }
        ),
        "{err:?}"
    );
    let new = Custody::open(new_cfg).expect("reopen new");
    for (blob, (aad, pt)) in rewrapped.iter().zip(&recs) {
        assert_eq!(
            new.open_record(aad, blob)
                .expect("still opens")
                .expose_secret(),
            pt.as_slice()
        );
    }
    for it in &items {
        assert!(
            new.open_record(&it.aad, &it.blob).is_err(),
            "old blob opened after rotation"
        );
        // Forging the header to name the new KEK does not help: the data key was wrapped by the old one.
        let forged = forge_kek_id(&it.blob, new.kek_id(), new.wrapper().backend().code());
        let res = new.open_record(&it.aad, &forged);
        assert!(
            matches!(
                res,
                Err(HsmError::Authentication { .. } | HsmError::Malformed { .. })
            ),
            "forged header: {res:?}"
        );
    }
}

#[test]
fn pkcs11_rotation_rewraps_every_record_and_the_old_kek_can_be_destroyed() {
    let t = SoftHsmToken::create("rot").expect("token");
    rotate_and_destroy(
        &CustodyConfig::Pkcs11(t.config("kek-2024")),
        &CustodyConfig::Pkcs11(t.config("kek-2025")),
    );
}

#[test]
fn tpm_rotation_rewraps_every_record_and_the_old_key_can_be_evicted() {
    let tpm = Swtpm::start().expect("swtpm");
    let old = TpmConfig {
        persistent_handle: 0x8101_0020,
        ..tpm.config()
    };
    let new = TpmConfig {
        persistent_handle: 0x8101_0021,
        ..tpm.config()
    };
    rotate_and_destroy(&CustodyConfig::Tpm(old), &CustodyConfig::Tpm(new));
}

#[test]
fn rotation_from_pkcs11_to_tpm_moves_records_across_backends() {
    let t = SoftHsmToken::create("cross").expect("token");
    let tpm = Swtpm::start().expect("swtpm");
    rotate_and_destroy(
        &CustodyConfig::Pkcs11(t.config("kek-old")),
        &CustodyConfig::Tpm(tpm.config()),
    );
}

#[test]
fn rewrap_with_the_wrong_old_kek_fails_and_changes_nothing() {
    let t = SoftHsmToken::create("rotbad").expect("token");
    let a = CustodyConfig::Pkcs11(t.config("kek-a"));
    let b = CustodyConfig::Pkcs11(t.config("kek-b"));
    let c = CustodyConfig::Pkcs11(t.config("kek-c"));
    for cfg in [&a, &b, &c] {
        custody::init(cfg).expect("init");
    }
    let (a, b, c) = (
        Custody::open(&a).expect("a"),
        Custody::open(&b).expect("b"),
        Custody::open(&c).expect("c"),
    );
    let aad = Aad::new("n", "k", RecordKind::KeyShare).expect("aad");
    let blob = a.seal(&aad, SECRET).expect("seal");
    let items = vec![RotationItem {
        aad: aad.clone(),
        blob: blob.clone(),
    }];
    let (idx, err) = envelope::rewrap_all(b.wrapper().as_ref(), c.wrapper().as_ref(), &items)
        .expect_err("wrong old");
    assert_eq!(idx, 0);
    assert!(matches!(err, HsmError::KekMismatch { .. }), "{err:?}");
    // Wrong aad during rewrap is caught by the old KEK's authenticated unwrap.
    let other = Aad::new("n", "k", RecordKind::AuxInfo).expect("aad");
    assert!(envelope::rewrap(a.wrapper().as_ref(), c.wrapper().as_ref(), &other, &blob).is_err());
    assert_eq!(
        a.open_record(&aad, &blob)
            .expect("unchanged")
            .expose_secret(),
        SECRET
    );
}
