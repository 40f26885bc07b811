//! CGGMP24 3-of-5, the cluster's default: keygen, aux info (public test-only prime
//! fixtures 0..4) and a presignature, every party on its own thread over the channel
//! delivery; the signature verifies with libsecp256k1 over a P2WPKH sighash.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::{self, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, CompressedPublicKey, ScriptBuf};
use common::*;
use signer_protocol::ecdsa::{self, EcdsaAuxMsg, EcdsaKeyShare, EcdsaKeygenMsg, EcdsaSignMsg};
use signer_protocol::{ProtocolKind, SighashMessage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_3_of_5_keygen_aux_presign_sign_over_channels() {
    let (n, t) = (5u16, 3u16);
    let eid_k = eid("3of5", ProtocolKind::EcdsaKeygen, t, n);
    let incomplete = all_ok(
        run_over_channels::<EcdsaKeygenMsg, _, _, _>(
            ProtocolKind::EcdsaKeygen,
            n,
            None,
            Duration::from_secs(60),
            move |i, party| async move { ecdsa::keygen(party, &eid_k, i, n, t, None).await },
        )
        .await,
    );
    let eid_a = eid("3of5", ProtocolKind::EcdsaAuxInfo, t, n);
    let aux = all_ok(
        run_over_channels::<EcdsaAuxMsg, _, _, _>(
            ProtocolKind::EcdsaAuxInfo,
            n,
            None,
            Duration::from_secs(600),
            move |i, party| async move {
                ecdsa::aux_info(party, &eid_a, i, n, test_primes(i), None).await
            },
        )
        .await,
    );
    let shares: Arc<Vec<EcdsaKeyShare>> = Arc::new(
        incomplete
            .iter()
            .zip(&aux)
            .map(|(s, a)| EcdsaKeyShare::from_parts(s, a).expect("combine"))
            .collect(),
    );
    let pk = shares[0].public_key();
    assert!(shares
        .iter()
        .all(|s| s.public_key() == pk && s.threshold() == 3));

    // signer set: keygen parties 4, 2, 0 in that run order; key path m/0/1
    let signers = vec![4u16, 2, 0];
    let path = vec![0u32, 1];
    let eid_p = eid("3of5", ProtocolKind::EcdsaPresign, t, n);
    let (sh, sg, pa) = (shares.clone(), signers.clone(), path.clone());
    let presigs = all_ok(
        run_over_channels::<EcdsaSignMsg, _, _, _>(
            ProtocolKind::EcdsaPresign,
            t,
            None,
            Duration::from_secs(300),
            move |pos, party| {
                let (sh, sg, pa) = (sh.clone(), sg.clone(), pa.clone());
                async move {
                    let share = &sh[usize::from(sg[usize::from(pos)])];
                    ecdsa::presign(party, &eid_p, pos, &sg, share, &pa, None).await
                }
            },
        )
        .await,
    );

    let child = shares[3].derive_public_key(&path).expect("child key");
    let spk = ScriptBuf::new_p2wpkh(&CompressedPublicKey(child).wpubkey_hash());
    let value = Amount::from_sat(1_000_000);
    let tx = spending_tx(value, spk.clone());
    let mut cache = SighashCache::new(&tx);
    let msg =
        SighashMessage::p2wpkh(&mut cache, 0, &spk, value, EcdsaSighashType::All).expect("message");
    let sighash = cache
        .p2wpkh_signature_hash(0, &spk, value, EcdsaSighashType::All)
        .expect("sighash");

    let mut partials = Vec::new();
    let mut public = None;
    for p in presigs {
        let (partial, pubdata) = p
            .issue_partial_signature(
                &msg,
                &path,
                &vote::InputPermit::for_tests_only(0, msg.sighash()),
            )
            .expect("issue");
        partials.push(partial);
        public = Some(pubdata);
    }
    let public = public.expect("public data");
    assert_eq!(public.public_key(), child);
    let sig = ecdsa::combine_partial_signatures(&public, &partials, &msg).expect("combine");
    Secp256k1::verification_only()
        .verify_ecdsa(
            &secp256k1::Message::from_digest(*sighash.as_ref()),
            &sig,
            &child,
        )
        .expect("3-of-5 signature verifies");
}
