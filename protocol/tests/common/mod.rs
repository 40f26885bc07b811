//! Shared test helpers: run n parties, each on its own protocol thread, connected by the
//! crate's channel delivery through an in-process router.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bitcoin::absolute::LockTime;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use serde::{de::DeserializeOwned, Serialize};
use signer_protocol::local::{local_network, Tamper};
use signer_protocol::round_based::MpcParty;
use signer_protocol::{run_on_thread, ChannelDelivery, ExecutionId, ProtocolError, ProtocolKind};

/// Party type the runners get in channel tests.
pub type ChanParty<M> = MpcParty<M, ChannelDelivery<M>>;

/// Runs `n` parties over channels; each result is `Err(None)` if that party did not
/// finish within `timeout` (it is then cancelled).
pub async fn run_over_channels<M, T, F, Fut>(
    kind: ProtocolKind,
    n: u16,
    tamper: Option<Tamper>,
    timeout: Duration,
    f: F,
) -> Vec<Result<T, Option<ProtocolError>>>
where
    M: Serialize + DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: Fn(u16, ChanParty<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<T, ProtocolError>> + 'static,
{
    let endpoints = local_network(n, tamper);
    let mut handles = Vec::new();
    for (i, ep) in (0..n).zip(endpoints) {
        let f = f.clone();
        handles.push(tokio::spawn(async move {
            let fut = run_on_thread(kind, move || {
                let party =
                    signer_protocol::channel_party::<M>(ep.config, ep.incoming, ep.outgoing);
                f(i, party)
            });
            tokio::time::timeout(timeout, fut).await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        let r = match h.await.expect("party task must not panic") {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Some(e)),
            Err(_) => Err(None),
        };
        out.push(r);
    }
    out
}

/// Unwraps all results, with a readable panic.
pub fn all_ok<T>(rs: Vec<Result<T, Option<ProtocolError>>>) -> Vec<T> {
    rs.into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(v) => v,
            Err(Some(e)) => panic!("party {i} failed: {e}"),
            Err(None) => panic!("party {i} timed out"),
        })
        .collect()
}

/// Execution id for a test run.
pub fn eid(tag: &str, kind: ProtocolKind, t: u16, n: u16) -> ExecutionId {
    let participants: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let mut session = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut session);
    ExecutionId::derive(&session, kind, t, &participants, tag.as_bytes())
}

/// A one-input, one-output transaction spending `prev` (value `value`).
pub fn spending_tx(value: Amount, to: ScriptBuf) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
                    .parse()
                    .expect("valid txid"),
                vout: 1,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: value - Amount::from_sat(1_000),
            script_pubkey: to,
        }],
    }
}

/// Runs `n` parties over channels and returns the result of party `observer` only; the
/// other parties are cancelled as soon as the observer finishes (they may be stuck
/// waiting for the observer after it aborted).
pub async fn run_observe<M, T, F, Fut>(
    kind: ProtocolKind,
    n: u16,
    tamper: Option<Tamper>,
    observer: u16,
    f: F,
) -> Result<T, ProtocolError>
where
    M: Serialize + DeserializeOwned + Send + 'static,
    T: Send + 'static,
    F: Fn(u16, ChanParty<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<T, ProtocolError>> + 'static,
{
    let endpoints = local_network(n, tamper);
    let mut others = Vec::new();
    let mut mine = None;
    for (i, ep) in (0..n).zip(endpoints) {
        let f = f.clone();
        let h = tokio::spawn(run_on_thread(kind, move || {
            let party = signer_protocol::channel_party::<M>(ep.config, ep.incoming, ep.outgoing);
            f(i, party)
        }));
        if i == observer {
            mine = Some(h);
        } else {
            others.push(h);
        }
    }
    let mine = mine.expect("observer index must be < n");
    let r = tokio::time::timeout(Duration::from_secs(120), mine)
        .await
        .expect("observer must finish")
        .expect("observer task must not panic");
    for h in others {
        h.abort();
    }
    r
}

/// Loads the public test-only prime set `i` from `fixtures/test-primes/`.
pub fn test_primes(i: u16) -> signer_protocol::ecdsa::PrimeSet {
    let path = format!(
        "{}/fixtures/test-primes/primes-{i}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json = std::fs::read_to_string(&path).expect("fixture prime set must exist");
    signer_protocol::ecdsa::PrimeSet::from_json(&json).expect("fixture prime set must validate")
}

/// Long hex strings and byte strings found anywhere in a CBOR record (after the 4-byte
/// header): the secret material a `Debug` output must not show.
pub fn secret_fragments(record: &[u8]) -> Vec<String> {
    fn walk(v: &ciborium::Value, out: &mut Vec<String>) {
        match v {
            ciborium::Value::Text(s) if s.len() >= 32 => out.push(s.to_lowercase()),
            ciborium::Value::Bytes(b) if b.len() >= 16 => out.push(hex::encode(b)),
            ciborium::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            ciborium::Value::Map(m) => m.iter().for_each(|(k, x)| {
                walk(k, out);
                walk(x, out)
            }),
            ciborium::Value::Tag(_, x) => walk(x, out),
            _ => {}
        }
    }
    let v: ciborium::Value = ciborium::from_reader(&record[4..]).expect("record body is cbor");
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// Asserts that `debug` says it redacted and contains no fragment of the record other
/// than the listed public values (hex).
pub fn assert_redacted(debug: &str, record: &[u8], public: &[String]) {
    assert!(
        debug.contains("redacted"),
        "debug output must mark redaction: {debug}"
    );
    let frags = secret_fragments(record);
    assert!(
        !frags.is_empty(),
        "the record must contain secret material to check"
    );
    let lower = debug.to_lowercase();
    for f in frags {
        // any 16-hex-digit window of a secret would be a leak
        let probe = &f[..16.min(f.len())];
        if public.iter().any(|p| p.contains(probe)) {
            continue;
        }
        assert!(
            !lower.contains(probe),
            "debug output leaks {probe}: {debug}"
        );
    }
}
