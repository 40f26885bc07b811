//! The RPC client against a tiny HTTP server on a loopback socket that answers
//! like bitcoind (JSON-RPC envelopes, HTTP 500 for RPC errors, 401 without a
//! body), and the pure scan helpers.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;
use std::time::Duration;

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::{Network, NetworkKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use wallet::KeyKind;

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Value,
}

/// Serves `answers` (status line + headers + body, built by [`answer`]) to one
/// connection each, in order; returns the URL and the requests seen.
async fn serve(answers: Vec<Vec<u8>>) -> (String, tokio::sync::mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for a in answers {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // read the head, then Content-Length bytes of body
            let (head, body) = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < pos + 4 + len {
                        let n = sock.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[pos + 4..pos + 4 + len].to_vec());
                }
            };
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let _ = tx.send(Seen { head, body }).await;
            let _ = sock.write_all(&a).await;
            let _ = sock.shutdown().await;
        }
    });
    (url, rx)
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn cookie_client(url: &str, dir: &tempfile::TempDir) -> RpcClient {
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:s3cret-cookie-pass\n").unwrap();
    RpcClient::new(url, RpcAuth::Cookie(cookie), Duration::from_secs(10)).unwrap()
}

#[tokio::test]
async fn calls_send_a_json_rpc_envelope_with_basic_auth_and_decode_the_result() {
    let info = r#"{"result":{"chain":"regtest","blocks":101},"error":null,"id":"signer"}"#;
    let (url, mut seen) = serve(vec![
        answer("200 OK", info),
        answer("200 OK", info),
        answer("200 OK", info),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rpc = cookie_client(&url, &dir);
    let v: Value = rpc.call("getblockchaininfo", json!([])).await.unwrap();
    assert_eq!(v["blocks"], 101);
    let req = seen.recv().await.unwrap();
    assert!(req.head.starts_with("POST / HTTP/1.1"), "{}", req.head);
    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode("__cookie__:s3cret-cookie-pass");
    assert!(
        req.head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Basic {expected}"))),
        "{}",
        req.head
    );
    assert_eq!(req.body["jsonrpc"], "1.0");
    assert_eq!(req.body["method"], "getblockchaininfo");
    assert_eq!(req.body["params"], json!([]));
    check_network(&rpc, Network::Regtest).await.unwrap();
    let e = check_network(&rpc, Network::Bitcoin).await.unwrap_err();
    assert!(matches!(e, ChainError::WrongNetwork { .. }), "{e}");
}

#[tokio::test]
async fn rpc_errors_http_errors_and_malformed_answers_are_told_apart() {
    let (url, mut seen) = serve(vec![
        answer(
            "500 Internal Server Error",
            r#"{"result":null,"error":{"code":-26,"message":"txn-already-in-mempool"},"id":"signer"}"#,
        ),
        answer(
            "500 Internal Server Error",
            r#"{"result":null,"error":{"code":-27,"message":"Transaction outputs already in utxo set"},"id":"signer"}"#,
        ),
        answer(
            "500 Internal Server Error",
            r#"{"result":null,"error":{"code":-25,"message":"bad-txns-inputs-missingorspent"},"id":"signer"}"#,
        ),
        answer("401 Unauthorized", ""),
        answer("200 OK", "<html>not json</html>"),
        answer("200 OK", r#"{"error":null,"id":"signer"}"#),
        answer("200 OK", r#"{"result":"not a number","error":null}"#),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rpc = cookie_client(&url, &dir);
    let e = rpc
        .call::<String>("sendrawtransaction", json!(["00"]))
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(-26));
    assert!(already_known(&e), "{e}");
    let req = seen.recv().await.unwrap();
    assert_eq!(req.body["params"], json!(["00"]));
    let e = rpc
        .call::<String>("sendrawtransaction", json!(["00"]))
        .await
        .unwrap_err();
    assert!(already_known(&e), "{e}");
    let e = rpc
        .call::<String>("sendrawtransaction", json!(["00"]))
        .await
        .unwrap_err();
    assert!(!already_known(&e), "{e}");
    assert!(e.to_string().contains("missingorspent"), "{e}");
    let e = rpc
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Http { status: 401, .. }), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    for _ in 0..3 {
        let e = rpc
            .call::<u64>("getblockcount", json!([]))
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::Malformed { .. }), "{e}");
    }
}

#[tokio::test]
async fn answers_larger_than_the_bound_are_refused_with_or_without_a_length() {
    let big = format!(r#"{{"result":"{}","error":null}}"#, "a".repeat(4096));
    let chunked = {
        let mut a = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for part in big.as_bytes().chunks(512) {
            a.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            a.extend_from_slice(part);
            a.extend_from_slice(b"\r\n");
        }
        a.extend_from_slice(b"0\r\n\r\n");
        a
    };
    let (url, _seen) = serve(vec![
        answer("200 OK", &big),
        chunked,
        answer("200 OK", &big),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rpc = cookie_client(&url, &dir).with_max_response(1024);
    for _ in 0..2 {
        let e = rpc.call::<String>("getblock", json!([])).await.unwrap_err();
        assert!(matches!(e, RpcError::TooLarge { .. }), "{e}");
    }
    let rpc = rpc.with_max_response(rpc::MAX_RESPONSE_BYTES);
    let s: String = rpc.call("getblock", json!([])).await.unwrap();
    assert_eq!(s.len(), 4096);
}

#[tokio::test]
async fn unreachable_nodes_and_bad_credentials_fail_before_or_at_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let missing = RpcClient::new(
        "http://127.0.0.1:1",
        RpcAuth::Cookie(dir.path().join("none")),
        Duration::from_secs(5),
    )
    .unwrap();
    let e = missing
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Credentials(_)), "{e}");
    std::fs::write(dir.path().join("bad"), "no-colon\n").unwrap();
    let bad = RpcClient::new(
        "http://127.0.0.1:1",
        RpcAuth::Cookie(dir.path().join("bad")),
        Duration::from_secs(5),
    )
    .unwrap();
    let e = bad
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not user:password"), "{e}");
    // a closed port: transport error
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let rpc = cookie_client(&format!("http://127.0.0.1:{port}"), &dir);
    let e = rpc
        .call::<Value>("getblockcount", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::Transport { .. }), "{e}");
    let auth = RpcAuth::UserPass {
        user: "u".into(),
        password: secrecy::SecretString::from("pw-secret".to_owned()),
    };
    assert!(!format!("{auth:?}").contains("pw-secret"));
}

#[tokio::test]
async fn config_sections_make_clients_and_password_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let off = crate::config::ChainConfig::default();
    assert!(RpcClient::from_config(&off).unwrap().is_none());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let (url, mut seen) = serve(vec![answer("200 OK", r#"{"result":7,"error":null}"#)]).await;
    let cfg = crate::config::ChainConfig {
        bitcoind_rpc_url: Some(url),
        rpc_user: Some("alice".into()),
        rpc_password_file: Some(pw),
        ..Default::default()
    };
    let rpc = RpcClient::from_config(&cfg).unwrap().unwrap();
    assert!(!format!("{rpc:?}").contains("hunter2"));
    let n: u64 = rpc.call("getblockcount", json!([])).await.unwrap();
    assert_eq!(n, 7);
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode("alice:hunter2");
    let req = seen.recv().await.unwrap();
    assert!(req.head.contains(&expected), "{}", req.head);
}

fn key(kind: KeyKind, seed: u8) -> WalletKey {
    let xprv = Xpriv::new_master(NetworkKind::Test, &[seed; 32]).unwrap();
    let xpub = Xpub::from_priv(&bitcoin::secp256k1::Secp256k1::new(), &xprv);
    WalletKey::new(format!("{kind}-{seed}"), kind, xpub, Network::Regtest)
}

#[test]
fn scan_objects_cover_both_chains_of_every_key_over_the_lookahead() {
    let keys = [key(KeyKind::Ecdsa, 1), key(KeyKind::Taproot, 2)];
    let v = scan_objects(&keys);
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 4);
    let (recv, change) = keys[1].single_path_descriptors();
    assert_eq!(a[2]["desc"], recv.as_str());
    assert_eq!(a[3]["desc"], change.as_str());
    assert_eq!(a[0]["range"], json!([0, DEFAULT_GAP - 1]));
}

#[test]
fn scan_results_keep_our_spendable_outputs_with_their_paths() {
    let keys = [key(KeyKind::Ecdsa, 1), key(KeyKind::Taproot, 2)];
    let ours = keys[1].change_script(7).unwrap();
    let also = keys[0].receive_script(0).unwrap();
    let foreign = key(KeyKind::Ecdsa, 9).receive_script(0).unwrap();
    let txid = |n: u8| bitcoin::Txid::from_str(&format!("{n:02x}").repeat(32)).unwrap();
    let result: ScanResult = serde_json::from_value(json!({
        "success": true,
        "height": 150,
        "unspents": [
            {"txid": txid(1).to_string(), "vout": 1, "scriptPubKey": hex::encode(ours.as_bytes()),
             "desc": "tr(...)", "amount": 0.5, "coinbase": false, "height": 150},
            {"txid": txid(2).to_string(), "vout": 0, "scriptPubKey": hex::encode(also.as_bytes()),
             "desc": "wpkh(...)", "amount": 50.0, "coinbase": true, "height": 51},
            {"txid": txid(3).to_string(), "vout": 0, "scriptPubKey": hex::encode(also.as_bytes()),
             "desc": "wpkh(...)", "amount": 50.0, "coinbase": true, "height": 52},
            {"txid": txid(4).to_string(), "vout": 0, "scriptPubKey": hex::encode(foreign.as_bytes()),
             "desc": "wpkh(...)", "amount": 1.0, "height": 10},
            {"txid": txid(5).to_string(), "vout": 0, "scriptPubKey": "zz",
             "desc": "wpkh(...)", "amount": 1.0, "height": 10},
        ],
        "total_amount": 151.5
    }))
    .unwrap();
    let got = owned_unspents(&result, &keys);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].key_id, keys[1].key_id());
    assert_eq!((got[0].chain, got[0].index), (1, 7));
    assert_eq!(got[0].value_sats, 50_000_000);
    assert_eq!(got[0].outpoint.vout, 1);
    // coinbase at height 51 has 100 confirmations at 150; the one at 52 does not
    assert_eq!(got[1].outpoint.txid, txid(2));
    assert_eq!(got[1].value_sats, 5_000_000_000);
    assert_eq!((got[1].chain, got[1].index), (0, 0));
}

#[test]
fn btc_amounts_convert_exactly_and_out_of_range_ones_are_refused() {
    assert_eq!(btc_to_sats(0.00000001), Some(1));
    assert_eq!(btc_to_sats(0.1), Some(10_000_000));
    assert_eq!(btc_to_sats(20_999_999.976_9), Some(2_099_999_997_690_000));
    assert_eq!(btc_to_sats(21_000_000.0), Some(wallet::MAX_MONEY_SATS));
    assert_eq!(btc_to_sats(21_000_000.00000001), None);
    assert_eq!(btc_to_sats(0.0), None);
    assert_eq!(btc_to_sats(-1.0), None);
    assert_eq!(btc_to_sats(f64::NAN), None);
    assert_eq!(btc_to_sats(f64::INFINITY), None);
}
