//! Builders shared by the integration tests.
#![allow(dead_code)]

use bitcoin::hashes::Hash;
use bitcoin::{Address, OutPoint, PubkeyHash, ScriptBuf, Txid, WPubkeyHash, WScriptHash};
use policy::{
    ApprovalRecord, Context, Decision, Network, Policy, ScriptType, TxInput, TxOutput, TxView,
    WindowSpent,
};

pub const KEY: &str = "k1";
/// Wednesday 2024-01-03 12:00:00 UTC.
pub const WED_NOON: u64 = 1_704_240_000 + 12 * 3600;
pub const DAY: u64 = 86_400;

/// A policy with one regtest scope for [`KEY`] whose body is `rules`.
pub fn policy(rules: &str) -> Policy {
    let text = scope_text(Network::Regtest, rules);
    Policy::from_toml_str(&text, "test.toml")
        .unwrap_or_else(|e| panic!("test policy must load: {e}\n{text}"))
}

pub fn scope_text(network: Network, rules: &str) -> String {
    format!("version = 1\n[[scope]]\nkey_id = \"{KEY}\"\nnetwork = \"{network}\"\n{rules}\n")
}

/// Loads `text` and returns the error, panicking if it loads.
pub fn load_err(text: &str) -> String {
    match Policy::from_toml_str(text, "bad.toml") {
        Ok(_) => panic!("policy unexpectedly loaded:\n{text}"),
        Err(e) => e.to_string(),
    }
}

pub fn wpkh_script(n: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([n; 20]))
}

pub fn script_of(kind: ScriptType, n: u8) -> ScriptBuf {
    match kind {
        ScriptType::P2wpkh => wpkh_script(n),
        ScriptType::P2pkh => ScriptBuf::new_p2pkh(&PubkeyHash::from_byte_array([n; 20])),
        ScriptType::P2sh => ScriptBuf::new_p2sh(&bitcoin::ScriptHash::from_byte_array([n; 20])),
        ScriptType::P2wsh => ScriptBuf::new_p2wsh(&WScriptHash::from_byte_array([n; 32])),
        ScriptType::P2tr => {
            let mut b = vec![0x51, 0x20];
            b.extend([n; 32]);
            ScriptBuf::from_bytes(b)
        }
        ScriptType::OpReturn => ScriptBuf::from_bytes(vec![0x6a, 0x04, n, n, n, n]),
        ScriptType::Other => ScriptBuf::from_bytes(vec![0x51]),
    }
}

pub fn address_of(spk: &ScriptBuf, network: Network) -> Option<String> {
    Address::from_script(spk, network.to_bitcoin())
        .ok()
        .map(|a| a.to_string())
}

/// A regtest payment output of `amount` sats to script number `n` of `kind`.
pub fn out_kind(kind: ScriptType, n: u8, amount: u64) -> TxOutput {
    let spk = script_of(kind, n);
    TxOutput {
        address: address_of(&spk, Network::Regtest),
        script_pubkey: spk,
        script_type: kind,
        amount_sats: amount,
        is_change: false,
        belongs_to_wallet: false,
        descriptors: Vec::new(),
    }
}

/// A regtest p2wpkh payment output.
pub fn out(n: u8, amount: u64) -> TxOutput {
    out_kind(ScriptType::P2wpkh, n, amount)
}

/// A change output back to the wallet.
pub fn change(amount: u64) -> TxOutput {
    TxOutput {
        is_change: true,
        belongs_to_wallet: true,
        ..out(200, amount)
    }
}

/// A regtest view for [`KEY`] with one input covering `outputs` plus `fee`.
pub fn view(outputs: Vec<TxOutput>, fee: u64) -> TxView {
    let total: u64 = outputs.iter().map(|o| o.amount_sats).sum::<u64>() + fee;
    TxView {
        key_id: KEY.to_string(),
        network: Network::Regtest,
        txid: Txid::from_byte_array([9; 32]),
        inputs: vec![TxInput {
            outpoint: OutPoint::new(Txid::from_byte_array([8; 32]), 1),
            amount_sats: total,
            key_id: KEY.to_string(),
        }],
        outputs,
        fee_sats: fee,
        vsize_vb: 141,
    }
}

/// Context at [`WED_NOON`], no history, no approvals, initiator `init`.
pub fn ctx() -> Context {
    Context {
        now_unix: WED_NOON,
        window_spent: Vec::new(),
        approvals: Vec::new(),
        initiator: "init".to_string(),
    }
}

pub fn with_spent(mut c: Context, window_seconds: u64, spent_sats: u64) -> Context {
    c.window_spent.push(WindowSpent {
        window_seconds,
        spent_sats,
    });
    c
}

pub fn with_approval(mut c: Context, approver: &str, role: &str) -> Context {
    c.approvals.push(ApprovalRecord {
        approver: approver.to_string(),
        role: role.to_string(),
    });
    c
}

/// Violation codes of a decision (empty unless rejected).
pub fn codes(d: &Decision) -> Vec<&'static str> {
    d.violations().iter().map(|v| v.code().as_str()).collect()
}

pub fn assert_approved(d: &Decision) {
    assert!(
        matches!(d, Decision::Approve(_)),
        "expected approve, got {d:?}"
    );
}

pub fn assert_rejected_with(d: &Decision, code: &str) {
    assert!(
        codes(d).contains(&code),
        "expected a `{code}` violation, got {d:?}"
    );
}
