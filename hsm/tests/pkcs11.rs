//! PKCS#11 backend against a real SoftHSM2 token (one fresh token per test).

mod common;

use common::{aad, assert_every_flip_fails, SECRET};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use hsm::custody::{self, CustodyConfig};
use hsm::envelope;
use hsm::pkcs11::{self, Pkcs11Wrapper};
use hsm::testing::{softhsm_module, SoftHsmToken};
use hsm::{Custody, DataKey, HsmError, KeyWrapper, PinSource, RecordKind};
use secrecy::SecretString;

fn token_with_kek(prefix: &str) -> (SoftHsmToken, Pkcs11Wrapper) {
    let token = SoftHsmToken::create(prefix).expect("softhsm token");
    let w = Pkcs11Wrapper::open(&token.config("kek"), true).expect("open with kek creation");
    (token, w)
}

/// Counts all objects visible to the user in the token.
fn object_count(token: &SoftHsmToken) -> usize {
    let ctx = pkcs11::shared_context(&softhsm_module()).expect("module");
    let slot = pkcs11::find_token(&ctx, &token.label).expect("token");
    let s = ctx.open_ro_session(slot).expect("session");
    match s.login(UserType::User, Some(&SecretString::from(SoftHsmToken::PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    s.find_objects(&[]).expect("find objects").len()
}

/// The KEK attributes the custody policy asks for, written out here independently of
/// the crate's own generation template.
fn policy_kek_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Id(vec![0x5a; 8]),
        Attribute::ValueLen(32.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]
}

/// A fresh token holding an AES-256 key labelled "kek" (the label the configs below
/// look up), generated in the token with [`policy_kek_template`] except for `flipped`,
/// which replaces the template's attribute of the same type. Panics if SoftHSM refuses
/// the template or stores something other than `flipped`, so a case SoftHSM cannot
/// express fails loudly instead of passing.
fn token_with_kek_flipped(prefix: &str, flipped: &Attribute) -> SoftHsmToken {
    let token = SoftHsmToken::create(prefix).expect("softhsm token");
    let ty = flipped.attribute_type();
    let mut template = policy_kek_template("kek");
    let at = template
        .iter()
        .position(|a| a.attribute_type() == ty)
        .expect("flipped attribute is in the policy template");
    template[at] = flipped.clone();
    let ctx = pkcs11::shared_context(&softhsm_module()).expect("module");
    let slot = pkcs11::find_token(&ctx, &token.label).expect("token");
    let s = ctx.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&SecretString::from(SoftHsmToken::PIN)))
        .expect("login");
    let kek = s
        .generate_key(&Mechanism::AesKeyGen, &template)
        .unwrap_or_else(|e| panic!("softhsm refused to generate a kek with {flipped:?}: {e}"));
    let stored = s.get_attributes(kek, &[ty]).expect("read back");
    assert_eq!(
        stored.as_slice(),
        std::slice::from_ref(flipped),
        "softhsm did not store {flipped:?}"
    );
    // Log out and close the session: the wrapper must log in by itself.
    s.logout().expect("logout");
    drop(s);
    token
}

/// Opening (sealed start), `init` and `check` all refuse the KEK of `token` with a
/// `kek_policy` error whose detail is exactly `detail`, and write nothing.
fn assert_kek_refused(token: &SoftHsmToken, case: &str, detail: &str) {
    assert_eq!(object_count(token), 1, "{case}: only the kek before");
    let cfg = CustodyConfig::Pkcs11(token.config("kek"));
    let refused = |res: Result<(), HsmError>, what: &str| match res {
        Err(HsmError::KekPolicy { label, detail: got }) => {
            assert_eq!(label, "kek", "{case} {what}");
            assert_eq!(got, detail, "{case} {what}");
        }
        other => panic!("{case}: {what} gave {other:?}, expected kek_policy {detail:?}"),
    };
    refused(Custody::open(&cfg).map(drop), "sealed start");
    refused(
        Pkcs11Wrapper::open(&token.config("kek"), false).map(drop),
        "open",
    );
    // `init` finds the existing, bad kek: it neither accepts it nor makes another one.
    refused(custody::init(&cfg).map(drop), "init");
    let report = custody::check(&cfg);
    assert!(!report.is_ok(), "{case}: check passed:\n{report}");
    let failure = report.failure().expect("a failed step");
    assert_eq!(
        (failure.name, failure.code),
        ("kek", Some("kek_policy")),
        "{case}:\n{report}"
    );
    assert!(failure.detail.contains(detail), "{case}:\n{report}");
    assert_eq!(
        object_count(token),
        1,
        "{case}: a refused kek must not lead to objects being written"
    );
}

#[test]
fn data_key_wrap_unwrap_round_trip() {
    let (_t, w) = token_with_kek("rt");
    let dek = DataKey::generate().expect("rng");
    let wrapped = w.wrap(&dek, b"assoc").expect("wrap");
    assert_eq!(wrapped.bytes.len(), pkcs11::WRAPPED_LEN);
    assert!(
        !wrapped
            .bytes
            .windows(32)
            .any(|win| win == dek.expose_secret()),
        "wrapped key contains the plain key"
    );
    let back = w.unwrap(&wrapped, b"assoc").expect("unwrap");
    assert!(back.ct_eq(&dek));
    assert!(matches!(
        w.unwrap(&wrapped, b"other"),
        Err(HsmError::Authentication { .. })
    ));
}

#[test]
fn envelope_round_trip_and_ciphertext_hides_the_secret() {
    let (_t, w) = token_with_kek("env");
    let a = aad("node-1", "key-1", RecordKind::KeyShare);
    let blob = envelope::seal(&w, &a, SECRET).expect("seal");
    assert!(
        !blob
            .windows(8)
            .any(|win| SECRET.windows(8).any(|s| s == win)),
        "plaintext fragment in blob"
    );
    let info = envelope::inspect(&blob).expect("inspect");
    assert_eq!(info.kind, RecordKind::KeyShare);
    assert_eq!(info.wrapped.kek_id, w.kek_id());
    assert_eq!(info.ciphertext_len, SECRET.len() + 16);
    assert_eq!(
        envelope::open(&w, &a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn two_encryptions_of_the_same_secret_differ() {
    let (_t, w) = token_with_kek("twice");
    let a = aad("node-1", "key-1", RecordKind::AuxInfo);
    let b1 = envelope::seal(&w, &a, SECRET).expect("seal");
    let b2 = envelope::seal(&w, &a, SECRET).expect("seal");
    assert_ne!(b1, b2);
    let i1 = envelope::inspect(&b1).expect("inspect");
    let i2 = envelope::inspect(&b2).expect("inspect");
    assert_ne!(
        i1.wrapped.bytes, i2.wrapped.bytes,
        "data keys must be wrapped freshly"
    );
    // Same length, different ciphertext: the payload differs too, not just the header.
    assert_eq!(b1.len(), b2.len());
    assert_ne!(b1[b1.len() - SECRET.len()..], b2[b2.len() - SECRET.len()..]);
}

#[test]
fn a_flipped_bit_anywhere_in_the_blob_fails() {
    let (_t, w) = token_with_kek("flip");
    let a = aad("node-1", "key-1", RecordKind::Presignature);
    let blob = envelope::seal(&w, &a, SECRET).expect("seal");
    let tried = assert_every_flip_fails(&w, &a, &blob, true);
    assert_eq!(tried, blob.len() * 8);
    // The untouched blob still opens.
    assert_eq!(
        envelope::open(&w, &a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn a_blob_moved_to_another_node_key_record_or_kind_fails() {
    let (_t, w) = token_with_kek("moved");
    let a = hsm::Aad::with_record_id("node-1", "key-1", RecordKind::Presignature, "presig-7")
        .expect("aad");
    let blob = envelope::seal(&w, &a, SECRET).expect("seal");
    let elsewhere = [
        hsm::Aad::with_record_id("node-2", "key-1", RecordKind::Presignature, "presig-7")
            .expect("aad"),
        hsm::Aad::with_record_id("node-1", "key-2", RecordKind::Presignature, "presig-7")
            .expect("aad"),
        hsm::Aad::with_record_id("node-1", "key-1", RecordKind::Presignature, "presig-8")
            .expect("aad"),
        hsm::Aad::with_record_id("node-1", "key-1", RecordKind::KeyShare, "presig-7").expect("aad"),
    ];
    for other in &elsewhere {
        match envelope::open(&w, other, &blob) {
            Err(HsmError::Authentication { .. }) => {}
            res => panic!("opening under {other:?} gave {res:?}"),
        }
    }
    // Even with the header's kind byte rewritten to match, the kind is still bound.
    let mut relabelled = blob.clone();
    relabelled[5] = RecordKind::KeyShare.code();
    assert!(matches!(
        envelope::open(&w, &elsewhere[3], &relabelled),
        Err(HsmError::Authentication { .. })
    ));
    assert_eq!(
        envelope::open(&w, &a, &blob).expect("open").expose_secret(),
        SECRET
    );
}

#[test]
fn kek_is_sensitive_and_non_extractable_and_cannot_be_exported() {
    let (t, w) = token_with_kek("attrs");
    let attrs = w.kek_attributes().expect("attributes");
    assert!(attrs.sensitive && attrs.always_sensitive);
    assert!(!attrs.extractable && attrs.never_extractable);
    assert!(attrs.local && attrs.token && attrs.private);
    assert_eq!(attrs.value_len, 32);
    assert!(!attrs.modifiable && !attrs.copyable, "{attrs:?}");
    assert!(
        !attrs.derive && !attrs.wrap && !attrs.unwrap && !attrs.sign && !attrs.verify,
        "{attrs:?}"
    );
    assert!(attrs.unreported.is_empty(), "{attrs:?}");
    assert!(attrs.policy_violations().is_empty());

    // Independently of the crate's own probe: our own session, our own attempts.
    let ctx = pkcs11::shared_context(&softhsm_module()).expect("module");
    let slot = pkcs11::find_token(&ctx, &t.label).expect("token");
    let s = ctx.open_rw_session(slot).expect("session");
    let kek = s
        .find_objects(&[
            Attribute::Label(b"kek".to_vec()),
            Attribute::Class(ObjectClass::SECRET_KEY),
        ])
        .expect("find");
    assert_eq!(kek.len(), 1);
    let kek = kek[0];
    // CKA_VALUE cannot be read.
    let info = s
        .get_attribute_info(kek, &[AttributeType::Value])
        .expect("attribute info");
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "{info:?}"
    );
    let got = s
        .get_attributes(kek, &[AttributeType::Value])
        .expect("get attributes");
    assert!(
        got.iter().all(|a| !matches!(a, Attribute::Value(_))),
        "CKA_VALUE returned"
    );
    // C_WrapKey under a wrapping key we control is refused.
    let wrapping = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .expect("session wrapping key");
    for mech in [Mechanism::AesKeyWrap, Mechanism::AesKeyWrapPad] {
        match s.wrap_key(&mech, wrapping, kek) {
            Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::KeyUnextractable, _)) => {}
            other => panic!("wrap_key with {mech:?} gave {other:?}"),
        }
    }
    // Making it extractable is refused too.
    assert!(s
        .update_attributes(kek, &[Attribute::Extractable(true)])
        .is_err());
    assert!(s
        .update_attributes(kek, &[Attribute::Sensitive(false)])
        .is_err());
    let again = w.kek_attributes().expect("attributes");
    assert!(again.sensitive && !again.extractable);
    // And the crate's own probe agrees.
    let refusal = w.probe_export_refused().expect("export must be refused");
    assert!(refusal.contains("CKA_EXTRACTABLE"), "{refusal}");
}

#[test]
fn wrong_pin_is_a_distinct_error_without_the_pin_and_nothing_is_written() {
    let (t, _w) = token_with_kek("pin");
    let before = object_count(&t);
    let mut cfg = t.config("kek");
    cfg.pin = PinSource::File(
        t.pin_file_with("wrong", "9999-not-the-pin")
            .expect("pin file"),
    );
    let err = Pkcs11Wrapper::open(&cfg, true).expect_err("wrong pin must fail");
    assert!(matches!(err, HsmError::WrongPin { .. }), "{err:?}");
    assert!(!err.to_string().contains("9999"), "{err}");
    assert!(!format!("{err:?}").contains("9999"), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(
        object_count(&t),
        before,
        "a failed open must not create objects"
    );
}

#[test]
fn wrong_pin_on_a_fresh_token_fails_before_login_state_exists() {
    let t = SoftHsmToken::create("pin0").expect("token");
    let mut cfg = t.config("kek");
    cfg.pin = PinSource::File(t.pin_file_with("wrong", "0000-bad").expect("pin file"));
    let err = custody::init(&CustodyConfig::Pkcs11(cfg)).expect_err("wrong pin");
    assert_eq!(err.code(), "wrong_pin");
    assert_eq!(
        object_count(&t),
        0,
        "init with a wrong pin must not create the kek"
    );
}

#[test]
fn missing_token_is_a_distinct_error() {
    let (t, _w) = token_with_kek("tok");
    let mut cfg = t.config("kek");
    cfg.token_label = "no-such-token".into();
    match Custody::open(&CustodyConfig::Pkcs11(cfg)) {
        Err(HsmError::TokenNotFound { label, present }) => {
            assert_eq!(label, "no-such-token");
            assert!(present.contains(&t.label));
        }
        other => panic!("expected TokenNotFound, got {other:?}"),
    }
}

#[test]
fn missing_module_is_a_distinct_error() {
    let (t, _w) = token_with_kek("mod");
    let mut cfg = t.config("kek");
    cfg.module = "/nonexistent/libpkcs11.so".into();
    let err = Custody::open(&CustodyConfig::Pkcs11(cfg.clone())).expect_err("missing module");
    assert!(matches!(err, HsmError::ModuleNotFound { .. }), "{err:?}");
    // A file that is not a PKCS#11 library.
    cfg.module = t.pin_file.clone();
    let err = Custody::open(&CustodyConfig::Pkcs11(cfg)).expect_err("not a library");
    assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err:?}");
    assert!(!err.to_string().contains(SoftHsmToken::PIN), "{err}");
}

#[test]
fn missing_kek_fails_open_and_init_creates_it_once() {
    let t = SoftHsmToken::create("kek").expect("token");
    let cfg = CustodyConfig::Pkcs11(t.config("node-kek"));
    let err = Custody::open(&cfg).expect_err("no kek yet");
    assert!(matches!(err, HsmError::KekNotFound { .. }), "{err:?}");
    assert_eq!(object_count(&t), 0, "sealed start must not create the kek");
    let first = custody::init(&cfg).expect("init");
    assert!(first.created);
    let second = custody::init(&cfg).expect("init again");
    assert!(!second.created);
    assert_eq!(first.kek_id, second.kek_id);
    assert_eq!(object_count(&t), 1);
    let c = Custody::open(&cfg).expect("open after init");
    assert_eq!(c.kek_id(), first.kek_id);
}

#[test]
fn missing_pin_file_and_unset_credentials_directory_are_pin_source_errors() {
    let t = SoftHsmToken::create("pinsrc").expect("token");
    let mut cfg = t.config("kek");
    cfg.pin = PinSource::File(t.dir.path().join("absent"));
    assert_eq!(
        Custody::open(&CustodyConfig::Pkcs11(cfg.clone()))
            .expect_err("absent")
            .code(),
        "pin_source"
    );
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        cfg.pin = PinSource::Credential("hsm-pin".into());
        assert_eq!(
            Custody::open(&CustodyConfig::Pkcs11(cfg))
                .expect_err("no creds dir")
                .code(),
            "pin_source"
        );
    }
}

#[test]
fn check_reports_every_step_and_stops_at_a_wrong_pin() {
    let (t, _w) = token_with_kek("check");
    let good = custody::check(&CustodyConfig::Pkcs11(t.config("kek")));
    assert!(good.is_ok(), "{good}");
    let names: Vec<_> = good.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "module",
            "token",
            "login",
            "kek",
            "kek attributes",
            "export refused",
            "round trip"
        ]
    );
    let text = good.to_string();
    for shown in [
        "extractable=false",
        "modifiable=false",
        "copyable=false",
        "derive=false",
        "wrap=false",
        "unwrap=false",
        "sign=false",
        "verify=false",
    ] {
        assert!(text.contains(shown), "{shown}: {text}");
    }
    assert!(!text.contains(SoftHsmToken::PIN), "{text}");

    let mut cfg = t.config("kek");
    cfg.pin = PinSource::File(t.pin_file_with("wrong", "1111-wrong").expect("pin file"));
    let bad = custody::check(&CustodyConfig::Pkcs11(cfg));
    assert!(!bad.is_ok());
    let failure = bad.failure().expect("a failed step");
    assert_eq!((failure.name, failure.code), ("login", Some("wrong_pin")));
    assert!(!bad.to_string().contains("1111"));
}

#[test]
fn wrapper_is_usable_from_many_threads() {
    let (_t, w) = token_with_kek("threads");
    let w = std::sync::Arc::new(w);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || {
                let a = aad("node-1", &format!("key-{i}"), RecordKind::KeyShare);
                for _ in 0..50 {
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
fn debug_of_the_wrapper_and_custody_shows_no_secrets() {
    let (t, w) = token_with_kek("dbg");
    let d = format!("{w:?}");
    assert!(
        d.contains("Pkcs11Wrapper") && !d.contains(SoftHsmToken::PIN),
        "{d}"
    );
    let c = Custody::open(&CustodyConfig::Pkcs11(t.config("kek"))).expect("open");
    let d = format!("{c:?}");
    assert!(!d.contains(SoftHsmToken::PIN), "{d}");
    let cfg = format!("{:?}", t.config("kek"));
    assert!(!cfg.contains(SoftHsmToken::PIN), "{cfg}");
}

#[test]
fn a_kek_with_derive_wrap_modifiable_copyable_or_extractable_is_refused() {
    let cases = [
        ("derive", Attribute::Derive(true), "CKA_DERIVE is true"),
        ("wrap", Attribute::Wrap(true), "CKA_WRAP is true"),
        ("unwrap", Attribute::Unwrap(true), "CKA_UNWRAP is true"),
        (
            "modif",
            Attribute::Modifiable(true),
            "CKA_MODIFIABLE is true",
        ),
        ("copy", Attribute::Copyable(true), "CKA_COPYABLE is true"),
        // A key generated extractable was never non-extractable either.
        (
            "extract",
            Attribute::Extractable(true),
            "CKA_EXTRACTABLE is true, CKA_NEVER_EXTRACTABLE is false",
        ),
    ];
    for (prefix, flipped, detail) in cases {
        let token = token_with_kek_flipped(prefix, &flipped);
        assert_kek_refused(&token, prefix, detail);
    }
}

#[test]
fn a_kek_usable_for_sign_or_verify_is_refused() {
    for (prefix, flipped, detail) in [
        ("sign", Attribute::Sign(true), "CKA_SIGN is true"),
        ("verify", Attribute::Verify(true), "CKA_VERIFY is true"),
    ] {
        let token = token_with_kek_flipped(prefix, &flipped);
        assert_kek_refused(&token, prefix, detail);
    }
}

#[test]
fn a_kek_made_with_the_policy_template_is_accepted() {
    // The control for the two tests above: the same template, nothing flipped.
    let token = token_with_kek_flipped("ctrl", &Attribute::Derive(false));
    let cfg = CustodyConfig::Pkcs11(token.config("kek"));
    let c = Custody::open(&cfg).expect("a kek that meets the policy opens");
    assert_eq!(c.kek_id(), format!("kek#{}", "5a".repeat(8)));
    let report = custody::check(&cfg);
    assert!(report.is_ok(), "{report}");
    assert_eq!(object_count(&token), 1);
}
