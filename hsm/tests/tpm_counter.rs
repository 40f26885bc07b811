//! The TPM NV monotonic counter against a real swtpm (one fresh swtpm per test;
//! without swtpm these tests fail).

use std::str::FromStr;

use hsm::testing::{write_secret_file, Swtpm};
use hsm::tpm_counter::NvCounter;
use hsm::PinSource;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::NvIndexType;
use tss_esapi::handles::NvIndexTpmHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};
use tss_esapi::{Context, TctiNameConf};

const INDEX: u32 = 0x0180_0100;

#[test]
fn the_counter_only_moves_up_and_survives_reopening_and_redefinition() {
    let tpm = Swtpm::start().expect("swtpm");
    let (c, created) = NvCounter::open(&tpm.tcti(), INDEX, &None, &None, true).expect("define");
    assert!(created);
    assert_eq!(c.index(), INDEX);
    // Not incremented yet: no value.
    assert_eq!(c.read().expect("read"), None);
    let first = c.increment().expect("increment");
    assert_eq!(c.read().expect("read"), Some(first));
    for i in 1..=5 {
        assert_eq!(c.increment().expect("increment"), first + i);
    }
    // Another handle (a restarted process) sees the same value and continues it;
    // opening without `define` finds the existing counter.
    let (c2, created) = NvCounter::open(&tpm.tcti(), INDEX, &None, &None, false).expect("open");
    assert!(!created);
    assert_eq!(c2.read().expect("read"), Some(first + 5));
    assert_eq!(c2.increment().expect("increment"), first + 6);
    assert_eq!(c.read().expect("read"), Some(first + 6));
    drop(c2);

    // Undefined and defined again (owner auth): it does not start over below the
    // last value (the TPM keeps the highest count any counter ever had).
    c.undefine(&None).expect("undefine");
    let err = NvCounter::open(&tpm.tcti(), INDEX, &None, &None, false).expect_err("gone");
    assert_eq!(err.code(), "config", "{err}");
    let (c, created) = NvCounter::open(&tpm.tcti(), INDEX, &None, &None, true).expect("redefine");
    assert!(created);
    let again = c.increment().expect("increment");
    assert!(again > first + 6, "redefined counter restarted at {again}");
}

#[test]
fn an_index_that_is_not_a_counter_is_refused() {
    let tpm = Swtpm::start().expect("swtpm");
    // An ordinary NV index (writable at will) at the counter's handle.
    {
        let mut ctx =
            Context::new(TctiNameConf::from_str(&tpm.tcti()).expect("tcti")).expect("connect");
        let attributes = NvIndexAttributesBuilder::new()
            .with_nv_index_type(NvIndexType::Ordinary)
            .with_owner_write(true)
            .with_owner_read(true)
            .build()
            .expect("attributes");
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(INDEX).expect("handle"))
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(8)
            .build()
            .expect("public");
        let nv = ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_define_space(Provision::Owner, None, public)
            })
            .expect("define ordinary index");
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_write(
                NvAuth::Owner,
                nv,
                MaxNvBuffer::try_from(vec![0xff; 8]).expect("buffer"),
                0,
            )
        })
        .expect("write");
    }
    for define in [false, true] {
        let err =
            NvCounter::open(&tpm.tcti(), INDEX, &None, &None, define).expect_err("ordinary index");
        assert!(
            err.to_string().contains("is not a monotonic counter"),
            "{err}"
        );
    }
}

#[test]
fn the_counter_needs_its_auth_value_and_indices_stay_in_the_owner_range() {
    let tpm = Swtpm::start().expect("swtpm");
    let good =
        PinSource::File(write_secret_file(tpm.state_dir(), "nv", "counter auth").expect("file"));
    let bad = PinSource::File(write_secret_file(tpm.state_dir(), "bad", "not it").expect("file"));
    let (c, _) = NvCounter::open(&tpm.tcti(), INDEX, &Some(good.clone()), &None, true)
        .expect("define with auth");
    let v = c.increment().expect("increment");
    let (wrong, _) = NvCounter::open(&tpm.tcti(), INDEX, &Some(bad), &None, false).expect("open");
    let err = wrong.increment().expect_err("wrong auth");
    assert_eq!(err.code(), "tpm_auth_failed", "{err}");
    assert!(!err.to_string().contains("not it"));
    assert_eq!(c.read().expect("read"), Some(v));

    for index in [0x0100_0000, 0x01C0_0000, 0x8101_0020] {
        let err = NvCounter::open(&tpm.tcti(), index, &None, &None, true).expect_err("range");
        assert_eq!(err.code(), "config", "{index:#x}: {err}");
    }
}
