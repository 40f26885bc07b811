//! TPM backend against a real swtpm (one fresh swtpm per test).

mod common;

use common::{aad, assert_every_flip_fails, SECRET};
use hsm::custody::{self, CustodyConfig};
use hsm::envelope;
use hsm::testing::{free_port_pair, write_secret_file, Swtpm};
use hsm::tpm::{TpmConfig, TpmWrapper};
use hsm::{Custody, DataKey, HsmError, KeyWrapper, PinSource, RecordKind};

fn tpm_with_key() -> (Swtpm, TpmWrapper) {
    let tpm = Swtpm::start().expect("swtpm");
    let w = TpmWrapper::open(&tpm.config(), true).expect("open with key creation");
    (tpm, w)
}

#[test]
fn data_key_seal_unseal_round_trip() {
    let (_tpm, w) = tpm_with_key();
    let dek = DataKey::generate().expect("rng");
    let wrapped = w.wrap(&dek, b"assoc").expect("wrap");
    assert!(
        !wrapped
            .bytes
            .windows(32)
            .any(|win| win == dek.expose_secret()),
        "sealed blob contains the plain key"
    );
    let back = w.unwrap(&wrapped, b"assoc").expect("unwrap");
    assert!(back.ct_eq(&dek));
    assert!(matches!(
        w.unwrap(&wrapped, b"other"),
        Err(HsmError::Authentication { .. })
    ));
    // Wrong-aad attempts do not lock the TPM out (sealed objects are noDA).
    for _ in 0..20 {
        assert!(w.unwrap(&wrapped, b"other").is_err());
    }
    assert!(w
        .unwrap(&wrapped, b"assoc")
        .expect("still unwraps")
        .ct_eq(&dek));
}

#[test]
fn envelope_round_trip_and_two_encryptions_differ() {
    let (_tpm, w) = tpm_with_key();
    let a = aad("node-1", "key-1", RecordKind::KeyShare);
    let b1 = envelope::seal(&w, &a, SECRET).expect("seal");
    let b2 = envelope::seal(&w, &a, SECRET).expect("seal");
    assert_ne!(b1, b2);
    assert_ne!(
        envelope::inspect(&b1).expect("inspect").wrapped.bytes,
        envelope::inspect(&b2).expect("inspect").wrapped.bytes
    );
    assert!(
        !b1.windows(8).any(|win| SECRET.windows(8).any(|s| s == win)),
        "plaintext fragment in blob"
    );
    assert_eq!(
        envelope::open(&w, &a, &b1).expect("open").expose_secret(),
        SECRET
    );
    assert_eq!(
        envelope::open(&w, &a, &b2).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn a_flipped_bit_in_every_byte_of_the_blob_fails() {
    let (_tpm, w) = tpm_with_key();
    let a = aad("node-1", "key-1", RecordKind::AuxInfo);
    let blob = envelope::seal(&w, &a, SECRET).expect("seal");
    // One bit per byte (rotating position): each try is a TPM load, so not all 8.
    let tried = assert_every_flip_fails(&w, &a, &blob, false);
    assert_eq!(tried, blob.len());
    assert_eq!(
        envelope::open(&w, &a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn a_blob_moved_to_another_node_key_or_kind_fails() {
    let (_tpm, w) = tpm_with_key();
    let a = aad("node-1", "key-1", RecordKind::NodeIdentityKey);
    let blob = envelope::seal(&w, &a, SECRET).expect("seal");
    for other in [
        aad("node-2", "key-1", RecordKind::NodeIdentityKey),
        aad("node-1", "key-2", RecordKind::NodeIdentityKey),
        aad("node-1", "key-1", RecordKind::KeyShare),
    ] {
        match envelope::open(&w, &other, &blob) {
            Err(HsmError::Authentication { .. }) => {}
            res => panic!("opening under {other:?} gave {res:?}"),
        }
    }
}

#[test]
fn storage_key_is_fixed_to_the_tpm_and_generated_inside_it() {
    let (_tpm, w) = tpm_with_key();
    let info = w.storage_key_info().expect("read public");
    assert!(
        info.fixed_tpm
            && info.fixed_parent
            && info.sensitive_data_origin
            && info.restricted_decrypt,
        "{info:?}"
    );
    assert!(w.kek_id().starts_with("tpm:81010020:"), "{}", w.kek_id());
}

#[test]
fn swtpm_down_is_a_distinct_error() {
    let (mut tpm, w) = tpm_with_key();
    let cfg = tpm.config();
    drop(w);
    tpm.stop();
    let err = Custody::open(&CustodyConfig::Tpm(cfg)).expect_err("tpm is down");
    assert!(matches!(err, HsmError::TpmUnreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    // Nothing listens on a fresh port either.
    let port = free_port_pair().expect("port");
    let err = Custody::open(&CustodyConfig::Tpm(TpmConfig::new(format!(
        "swtpm:host=127.0.0.1,port={port}"
    ))))
    .expect_err("nothing listening");
    assert_eq!(err.code(), "tpm_unreachable");
}

#[test]
fn missing_storage_key_fails_open_and_init_creates_it_once() {
    let tpm = Swtpm::start().expect("swtpm");
    let cfg = CustodyConfig::Tpm(tpm.config());
    let err = Custody::open(&cfg).expect_err("no key yet");
    assert!(
        matches!(
            err,
            HsmError::TpmKeyNotFound {
                handle: 0x8101_0020
            }
        ),
        "{err:?}"
    );
    let first = custody::init(&cfg).expect("init");
    assert!(first.created);
    let second = custody::init(&cfg).expect("init again");
    assert!(!second.created);
    assert_eq!(first.kek_id, second.kek_id);
    let c = Custody::open(&cfg).expect("open after init");
    let a = aad("n", "k", RecordKind::PrimeSet);
    let blob = c.seal(&a, SECRET).expect("seal");
    // A second process-like handle on the same TPM opens what the first sealed.
    let c2 = Custody::open(&cfg).expect("open again");
    assert_eq!(
        c2.open_record(&a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn storage_key_auth_acts_as_a_pin() {
    let tpm = Swtpm::start().expect("swtpm");
    let good =
        write_secret_file(tpm.state_dir(), "auth", "correct horse battery").expect("auth file");
    let bad = write_secret_file(tpm.state_dir(), "bad", "wrong horse").expect("auth file");
    let mut cfg = tpm.config();
    cfg.key_auth = Some(PinSource::File(good));
    let init = custody::init(&CustodyConfig::Tpm(cfg.clone())).expect("init with auth");
    assert!(init.created);
    let c = Custody::open(&CustodyConfig::Tpm(cfg.clone())).expect("open with auth");
    let a = aad("n", "k", RecordKind::KeyShare);
    let blob = c.seal(&a, SECRET).expect("seal");

    let mut wrong = cfg.clone();
    wrong.key_auth = Some(PinSource::File(bad));
    let err = Custody::open(&CustodyConfig::Tpm(wrong)).expect_err("wrong auth");
    assert!(
        matches!(
            err,
            HsmError::TpmAuthFailed {
                handle: Some(0x8101_0020)
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("horse"));
    let mut none = cfg.clone();
    none.key_auth = None;
    assert_eq!(
        Custody::open(&CustodyConfig::Tpm(none))
            .expect_err("no auth")
            .code(),
        "tpm_auth_failed"
    );
    assert_eq!(
        c.open_record(&a, &blob)
            .expect("still opens")
            .expose_secret(),
        SECRET
    );
}

#[test]
fn check_reports_tpm_steps_and_an_unreachable_tpm() {
    let (mut tpm, _w) = tpm_with_key();
    let report = custody::check(&CustodyConfig::Tpm(tpm.config()));
    assert!(report.is_ok(), "{report}");
    let names: Vec<_> = report.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["tpm", "storage key", "storage key attributes", "round trip"]
    );
    let cfg = tpm.config();
    drop(_w);
    tpm.stop();
    let down = custody::check(&CustodyConfig::Tpm(cfg));
    let f = down.failure().expect("failure");
    assert_eq!((f.name, f.code), ("tpm", Some("tpm_unreachable")));
}

#[test]
fn wrapper_is_usable_from_many_threads() {
    let (_tpm, w) = tpm_with_key();
    let w = std::sync::Arc::new(w);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || {
                let a = aad("node-1", &format!("key-{i}"), RecordKind::Presignature);
                for _ in 0..10 {
                    let blob = envelope::seal(w.as_ref(), &a, SECRET).expect("seal");
                    assert_eq!(
                        envelope::open(w.as_ref(), &a, &blob)
                            .expect("open")
                            .expose_secret(),
                        SECRET
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}

#[test]
fn debug_of_the_tpm_wrapper_shows_no_auth_value() {
    let tpm = Swtpm::start().expect("swtpm");
    let auth = write_secret_file(tpm.state_dir(), "auth", "s3cret-auth-value").expect("auth file");
    let mut cfg = tpm.config();
    cfg.key_auth = Some(PinSource::File(auth));
    let w = TpmWrapper::open(&cfg, true).expect("open");
    let d = format!("{w:?} {cfg:?}");
    assert!(d.contains("TpmWrapper") && !d.contains("s3cret"), "{d}");
}
