//! TPM backend against a real swtpm (one fresh swtpm per test).

mod common;

use common::{aad, assert_every_flip_fails, SECRET};
use hsm::custody::{self, CustodyConfig};
use hsm::envelope;
use hsm::testing::{free_port_pair, write_secret_file, Swtpm};
use hsm::tpm::{TpmConfig, TpmWrapper};
use hsm::{Custody, DataKey, HsmError, KeyWrapper, PinSource, RecordKind};
use sha2::Digest as _;
use tss_esapi::structures::Public;
use tss_esapi::traits::UnMarshall;

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
        [
            "tpm",
            "storage key",
            "storage key name",
            "storage key attributes",
            "round trip"
        ]
    );
    // Unpinned: the step passes but says so, with the name to pin.
    let name_step = &report.steps[2];
    assert!(
        name_step.detail.contains("NOT PINNED")
            && name_step
                .detail
                .contains(&format!("key_name = \"{}\"", _w.key_name())),
        "{}",
        name_step.detail
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

/// A well-formed SHA-256 TPM name that is not the key's.
const OTHER_NAME: &str = "000b0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn the_storage_key_name_is_what_its_public_area_hashes_to_and_init_prints_it() {
    let tpm = Swtpm::start().expect("swtpm");
    let cfg = CustodyConfig::Tpm(tpm.config());
    let report = custody::init(&cfg).expect("init");
    let name = report
        .tpm_key_name
        .clone()
        .expect("tpm init reports the name");
    assert_eq!(name.len(), 68, "{name}");
    assert!(name.starts_with("000b"), "{name}");
    let printed = report.to_string();
    assert!(
        printed.contains(&format!("key_name = \"{name}\"")),
        "{printed}"
    );
    let w = TpmWrapper::open(&tpm.config(), false).expect("open");
    assert_eq!(w.key_name(), name);
    assert_eq!(w.storage_key_info().expect("info").name, name);
    // The kek id carries the start of the name's digest.
    assert!(w.kek_id().ends_with(&name[4..20]), "{}", w.kek_id());
    // Pinned with the right name (any case, optional 0x): opens.
    for pin in [name.clone(), name.to_uppercase(), format!("0x{name}")] {
        let mut c = tpm.config();
        c.key_name = Some(pin);
        drop(TpmWrapper::open(&c, false).expect("pinned to the right name"));
    }
    // A second init reports the same name.
    assert_eq!(
        custody::init(&cfg).expect("init again").tpm_key_name,
        Some(name)
    );
}

#[test]
fn a_storage_key_with_another_name_is_refused_before_any_unseal() {
    let tpm = Swtpm::start().expect("swtpm");
    let good = write_secret_file(tpm.state_dir(), "auth", "right auth").expect("auth file");
    let bad = write_secret_file(tpm.state_dir(), "bad", "wrong auth").expect("auth file");
    let mut cfg = tpm.config();
    cfg.key_auth = Some(PinSource::File(good));
    let name = custody::init(&CustodyConfig::Tpm(cfg.clone()))
        .expect("init")
        .tpm_key_name
        .expect("name");

    // Wrong pin: refused with the distinct error, naming both names.
    let mut wrong = cfg.clone();
    wrong.key_name = Some(OTHER_NAME.to_owned());
    let err = Custody::open(&CustodyConfig::Tpm(wrong.clone())).expect_err("other name");
    match &err {
        HsmError::TpmKeyNameMismatch {
            handle,
            expected,
            found,
        } => {
            assert_eq!(*handle, 0x8101_0020);
            assert_eq!(expected, OTHER_NAME);
            assert_eq!(found, &name);
        }
        other => panic!("expected TpmKeyNameMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), "tpm_key_name_mismatch");
    assert!(!err.is_transient());
    // The name is compared before the key is used at all: with a wrong auth value
    // too, the answer is the name mismatch, not an auth failure from the self-test
    // (which would be the first unseal).
    wrong.key_auth = Some(PinSource::File(bad));
    let err = Custody::open(&CustodyConfig::Tpm(wrong.clone())).expect_err("other name");
    assert_eq!(err.code(), "tpm_key_name_mismatch", "{err}");
    // `signer hsm check` fails at the name step.
    let report = custody::check(&CustodyConfig::Tpm(wrong));
    let f = report.failure().expect("failure");
    assert_eq!(
        (f.name, f.code),
        ("storage key name", Some("tpm_key_name_mismatch")),
        "{report}"
    );

    // Pinned to the right name: opens, and check says the pin matches.
    let mut pinned = cfg.clone();
    pinned.key_name = Some(name.clone());
    let c = Custody::open(&CustodyConfig::Tpm(pinned.clone())).expect("pinned");
    let a = aad("n", "k", RecordKind::KeyShare);
    let blob = c.seal(&a, SECRET).expect("seal");
    let report = custody::check(&CustodyConfig::Tpm(pinned.clone()));
    assert!(report.is_ok(), "{report}");
    assert!(
        report.to_string().contains("matches the pinned key_name"),
        "{report}"
    );
    drop(c);

    // The key is replaced by another one at the same handle (what an attacker with
    // owner auth, or a different TPM, would present): the pinned node refuses it.
    custody::destroy_kek(&CustodyConfig::Tpm(cfg.clone())).expect("evict");
    // `init` with the pin does not create a replacement...
    let err = custody::init(&CustodyConfig::Tpm(pinned.clone())).expect_err("pinned init");
    assert_eq!(err.code(), "config", "{err}");
    assert!(err.to_string().contains("key_name pins one"), "{err}");
    assert_eq!(
        Custody::open(&CustodyConfig::Tpm(cfg.clone()))
            .expect_err("nothing created")
            .code(),
        "tpm_key_not_found"
    );
    // ...an unpinned init does, and the pinned config refuses it.
    let new_name = custody::init(&CustodyConfig::Tpm(cfg.clone()))
        .expect("new key")
        .tpm_key_name
        .expect("name");
    assert_ne!(new_name, name);
    let err = Custody::open(&CustodyConfig::Tpm(pinned)).expect_err("replaced key");
    assert!(
        matches!(&err, HsmError::TpmKeyNameMismatch { found, .. } if *found == new_name),
        "{err:?}"
    );
    // Records of the old key stay unreadable under the new one.
    let c = Custody::open(&CustodyConfig::Tpm(cfg)).expect("new key opens unpinned");
    assert!(c.open_record(&a, &blob).is_err());
}

#[test]
fn malformed_pinned_names_and_pcr_lists_are_config_errors() {
    let base = TpmConfig::new("swtpm:host=127.0.0.1,port=1");
    for bad in [
        "",
        "zz",
        "000b00",
        // 34 bytes, but not the sha256 algorithm id
        "00040000000000000000000000000000000000000000000000000000000000000000",
        // sha256 id and one byte too many
        "000b000000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let mut c = base.clone();
        c.key_name = Some(bad.to_owned());
        let err = c.validate().expect_err(bad);
        assert_eq!(err.code(), "config", "{bad}: {err}");
    }
    let mut ok = base.clone();
    ok.key_name = Some(OTHER_NAME.to_owned());
    ok.pcrs = vec![23, 16, 7];
    ok.validate().expect("valid");
    for pcrs in [vec![24], vec![16, 16], vec![255]] {
        let mut c = base.clone();
        c.pcrs = pcrs.clone();
        let err = c.validate().expect_err("bad pcrs");
        assert_eq!(err.code(), "config", "{pcrs:?}: {err}");
        // Refused by open before the tpm is contacted (nothing listens on port 1).
        assert_eq!(
            TpmWrapper::open(&c, false).expect_err("bad pcrs").code(),
            "config"
        );
    }
}

/// The sealed object inside a TPM envelope: (public area, u16-framed).
fn sealed_public(blob: &[u8]) -> Public {
    let wrapped = envelope::inspect(blob).expect("inspect").wrapped.bytes;
    let len = usize::from(u16::from_be_bytes([wrapped[0], wrapped[1]]));
    Public::unmarshall(&wrapped[2..2 + len]).expect("public area")
}

#[test]
fn a_pcr_policy_refuses_unseal_once_the_pcr_is_extended() {
    let tpm = Swtpm::start().expect("swtpm");
    let mut cfg = tpm.config();
    cfg.pcrs = vec![16];
    custody::init(&CustodyConfig::Tpm(cfg.clone())).expect("init with a pcr policy");
    let c = Custody::open(&CustodyConfig::Tpm(cfg.clone())).expect("open");
    assert!(c.kek_id().ends_with(":pcr=16"), "{}", c.kek_id());
    let a = aad("node-1", "key-1", RecordKind::KeyShare);
    let blob = c.seal(&a, SECRET).expect("seal");

    // The sealed object needs the policy: no plain auth-value use, and its policy is
    // PolicyPCR(pcr 16 = its value now, zero after startup) ; PolicyAuthValue.
    let public = sealed_public(&blob);
    assert!(!public.object_attributes().user_with_auth());
    assert!(public.object_attributes().no_da());
    let mut h = sha2::Sha256::new();
    h.update([0u8; 32]);
    h.update(0x0000_017Fu32.to_be_bytes());
    h.update([0, 0, 0, 1, 0x00, 0x0B, 3, 0x00, 0x00, 0x01]);
    h.update(sha2::Sha256::digest([0u8; 32]));
    let after_pcr = h.finalize();
    let mut h = sha2::Sha256::new();
    h.update(after_pcr);
    h.update(0x0000_016Bu32.to_be_bytes());
    assert_eq!(public.auth_policy().value(), h.finalize().as_slice());

    // PCRs unchanged: it opens (also through a second handle), and the associated
    // data is still enforced inside the policy.
    assert_eq!(
        c.open_record(&a, &blob).expect("open").expose_secret(),
        SECRET
    );
    let c2 = Custody::open(&CustodyConfig::Tpm(cfg.clone())).expect("second handle");
    assert_eq!(
        c2.open_record(&a, &blob).expect("open").expose_secret(),
        SECRET
    );
    // swtpm has no resource manager: each open handle keeps a session loaded in the
    // TPM (at most three), so close this one.
    drop(c2);
    let other = aad("node-1", "key-1", RecordKind::AuxInfo);
    match c.open_record(&other, &blob) {
        Err(HsmError::Authentication { .. }) => {}
        res => panic!("other aad under a pcr policy gave {res:?}"),
    }

    // PCR 16 extended: the same blob is refused with the distinct error.
    tpm.extend_pcr(16, b"a new boot component").expect("extend");
    let err = c.open_record(&a, &blob).expect_err("pcr changed");
    assert!(
        matches!(&err, HsmError::TpmPcrPolicy { pcrs } if pcrs == &[16]),
        "{err:?}"
    );
    assert_eq!(err.code(), "tpm_pcr_policy");
    assert!(!err.is_transient());
    // Refused on every attempt (no DA lockout: the sealed objects are noDA), and by
    // a handle opened after the change (its own self-test passes: it seals and
    // unseals under the new values).
    for _ in 0..5 {
        assert_eq!(
            c.open_record(&a, &blob).expect_err("pcr changed").code(),
            "tpm_pcr_policy"
        );
    }
    let c3 = Custody::open(&CustodyConfig::Tpm(cfg.clone())).expect("open after the change");
    assert_eq!(
        c3.open_record(&a, &blob).expect_err("pcr changed").code(),
        "tpm_pcr_policy"
    );
    // What is sealed now is bound to the new value.
    let blob_new = c3.seal(&a, SECRET).expect("seal under the new value");
    assert_eq!(
        c3.open_record(&a, &blob_new).expect("open").expose_secret(),
        SECRET
    );

    // Back to the old value (PCR 16 is the resettable debug PCR): the old blob opens
    // again and the new one is refused.
    tpm.reset_pcr(16).expect("reset");
    assert_eq!(
        c.open_record(&a, &blob).expect("open").expose_secret(),
        SECRET
    );
    assert_eq!(
        c.open_record(&a, &blob_new)
            .expect_err("pcr changed")
            .code(),
        "tpm_pcr_policy"
    );

    // A PCR outside the policy changes nothing.
    tpm.extend_pcr(23, b"unrelated").expect("extend 23");
    assert_eq!(
        c.open_record(&a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn pcr_policy_lists_are_part_of_the_kek_id_and_records_move_by_rewrap() {
    let tpm = Swtpm::start().expect("swtpm");
    let plain_cfg = tpm.config();
    let mut pcr_cfg = tpm.config();
    pcr_cfg.pcrs = vec![23, 16];
    custody::init(&CustodyConfig::Tpm(plain_cfg.clone())).expect("init");
    let plain = TpmWrapper::open(&plain_cfg, false).expect("plain");
    let bound = TpmWrapper::open(&pcr_cfg, false).expect("with pcrs");
    assert_eq!(bound.pcrs(), [16, 23]);
    assert_eq!(bound.kek_id(), format!("{}:pcr=16,23", plain.kek_id()));
    let a = aad("n", "k", RecordKind::Presignature);
    let old = envelope::seal(&plain, &a, SECRET).expect("seal without policy");
    // A record sealed without the policy is not silently accepted by the policy
    // wrapper (nor the other way round)...
    assert_eq!(
        envelope::open(&bound, &a, &old)
            .expect_err("no policy")
            .code(),
        "kek_mismatch"
    );
    assert!(envelope::needs_rewrap(&bound, &old).expect("inspect"));
    // ...and moves under it by rewrap, after which the PCRs guard it.
    let moved = envelope::rewrap(&plain, &bound, &a, &old).expect("rewrap");
    assert!(!sealed_public(&moved).object_attributes().user_with_auth());
    assert_eq!(
        envelope::open(&bound, &a, &moved)
            .expect("open")
            .expose_secret(),
        SECRET
    );
    assert_eq!(
        envelope::open(&plain, &a, &moved)
            .expect_err("policy blob")
            .code(),
        "kek_mismatch"
    );
    tpm.extend_pcr(23, b"changed").expect("extend");
    assert_eq!(
        envelope::open(&bound, &a, &moved)
            .expect_err("pcr 23 changed")
            .code(),
        "tpm_pcr_policy"
    );
    // The record without policy is not affected by PCRs.
    assert_eq!(
        envelope::open(&plain, &a, &old)
            .expect("open")
            .expose_secret(),
        SECRET
    );
}

#[test]
fn check_reports_the_pcr_policy() {
    let tpm = Swtpm::start().expect("swtpm");
    let mut cfg = tpm.config();
    cfg.pcrs = vec![16];
    custody::init(&CustodyConfig::Tpm(cfg.clone())).expect("init");
    let report = custody::check(&CustodyConfig::Tpm(cfg));
    assert!(report.is_ok(), "{report}");
    let step = report
        .steps
        .iter()
        .find(|s| s.name == "pcr policy")
        .expect("pcr policy step");
    assert!(step.detail.contains("[16]"), "{}", step.detail);
}
