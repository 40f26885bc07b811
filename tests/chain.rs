//! The Bitcoin Core backend against a real regtest `bitcoind`: a 2-of-3
//! cluster whose nodes scan their UTXOs from bitcoind, pays from a mined coinbase,
//! broadcasts the signed transaction and follows it to `confirmed` once mined,
//! with both transitions audited on every node. The RPC client's request and
//! answer handling is unit-tested against a local HTTP server in
//! `signer/src/chain/tests.rs`.
//!
//! The test needs a `bitcoind` binary on PATH, which the registries this project
//! installs from do not package: it is `#[ignore]`d, so `make test` reports it as
//! ignored rather than passing without running it. Where Bitcoin Core is installed:
//! `cargo test -p cluster-tests --test chain -- --ignored`; it fails, saying so,
//! when no `bitcoind` is found.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cluster_tests::{other_address, Cluster};
use serde_json::{json, Value};
use signer::chain::{RpcAuth, RpcClient};

const N: usize = 3;

struct Bitcoind {
    child: Child,
    dir: tempfile::TempDir,
    rpc_port: u16,
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_bitcoind() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("bitcoind"))
        .find(|p| p.is_file())
}

impl Bitcoind {
    fn start(bin: &std::path::Path) -> Bitcoind {
        let dir = tempfile::tempdir().unwrap();
        let rpc_port = free_port();
        let child = Command::new(bin)
            .arg("-regtest")
            .arg(format!("-datadir={}", dir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            .args([
                "-server=1",
                "-listen=0",
                "-txindex=1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-fallbackfee=0.0001",
                "-printtoconsole=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Bitcoind {
            child,
            dir,
            rpc_port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rpc_port)
    }

    fn cookie(&self) -> std::path::PathBuf {
        self.dir.path().join("regtest").join(".cookie")
    }

    fn rpc(&self) -> RpcClient {
        RpcClient::new(
            &self.url(),
            RpcAuth::Cookie(self.cookie()),
            Duration::from_secs(60),
        )
        .unwrap()
    }
}

async fn state_everywhere(c: &Cluster, id: &str, want: &str, within: u64) {
    for i in 0..N {
        let v = c
            .eventually(
                &format!("transaction {id} {want} on node {i}"),
                Duration::from_secs(within),
                || async {
                    c.get_ok(i, &format!("/api/v1/transactions/{id}"))
                        .await
                        .filter(|v| {
                            v["state"] == want
                                || ["failed", "rejected", "expired"]
                                    .iter()
                                    .any(|s| v["state"] == *s)
                        })
                },
            )
            .await;
        assert_eq!(v["state"], want, "node {i}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs bitcoind on PATH; run with --ignored where Bitcoin Core is installed"]
async fn regtest_scan_pay_broadcast_and_confirm() {
    let bin = find_bitcoind().expect(
        "no `bitcoind` binary on PATH: this test runs a regtest Bitcoin Core; install \
         Bitcoin Core (bitcoind) and put it on PATH, or run without --ignored (the RPC \
         client alone is unit-tested in signer/src/chain/tests.rs)",
    );
    let core = Bitcoind::start(&bin);
    let rpc = core.rpc();
    let c = Cluster::start(3, 2);
    // bitcoind up (the cookie appears once its RPC server runs)
    c.eventually("bitcoind rpc", Duration::from_secs(60), || async {
        rpc.call::<u64>("getblockcount", json!([])).await.ok()
    })
    .await;
    // Restart every node with the backend on.
    let url = core.url();
    let cookie = core.cookie().display().to_string();
    for i in 0..N {
        c.kill_node(i);
        c.restart_node_with_env(
            i,
            &[
                ("SIGNER__CHAIN__BITCOIND_RPC_URL", url.as_str()),
                ("SIGNER__CHAIN__RPC_COOKIE_FILE", cookie.as_str()),
                ("SIGNER__CHAIN__BROADCAST", "true"),
                ("SIGNER__CHAIN__POLL_SECS", "1"),
            ],
        );
    }
    c.wait_ready(N).await;
    let key = c.dkg(N, "frost", 2).await;
    c.write_policy(N, &[&key], 500_000_000);
    let entry = c.key_entry(0, &key).await;
    let addr = entry["first_address"].as_str().unwrap().to_owned();

    // 101 blocks to the key, 100 more elsewhere: every coinbase of ours is mature.
    let _: Value = rpc
        .call("generatetoaddress", json!([101, addr]))
        .await
        .unwrap();
    let elsewhere = other_address().to_string();
    let _: Value = rpc
        .call("generatetoaddress", json!([100, elsewhere]))
        .await
        .unwrap();
    for i in 0..N {
        let db = c.db(i).await;
        c.eventually("scanned utxos", Duration::from_secs(120), || async {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM utxos WHERE key_id = $1")
                .bind(&key)
                .fetch_one(&db)
                .await
                .ok()?;
            (n == 101).then_some(())
        })
        .await;
    }

    // Pay 1 BTC: signed, broadcast by the backend, in bitcoind's mempool.
    let to = other_address();
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/transactions",
            &json!({ "key_id": key, "recipient": to.to_string(), "amount_sats": 100_000_000, "fee_rate_sat_vb": 2 }),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    state_everywhere(&c, &id, "broadcast", 240).await;
    let v = c
        .get_ok(0, &format!("/api/v1/transactions/{id}"))
        .await
        .unwrap();
    let txid = v["txid"].as_str().unwrap().to_owned();
    let mempool: Vec<String> = rpc.call("getrawmempool", json!([])).await.unwrap();
    assert!(mempool.contains(&txid), "{mempool:?}");

    // Mined: confirmed on every node, both transitions audited.
    let _: Value = rpc
        .call("generatetoaddress", json!([1, elsewhere]))
        .await
        .unwrap();
    state_everywhere(&c, &id, "confirmed", 120).await;
    let raw: Value = rpc
        .call("getrawtransaction", json!([txid, true]))
        .await
        .unwrap();
    assert!(raw["confirmations"].as_u64().unwrap() >= 1);
    let paid = raw["vout"].as_array().unwrap().iter().any(|o| {
        o["scriptPubKey"]["address"] == to.to_string() && o["value"].as_f64() == Some(1.0)
    });
    assert!(paid, "{raw}");
    for i in 0..N {
        let db = c.db(i).await;
        let actions: Vec<(String,)> = sqlx::query_as(
            "SELECT action FROM audit_log WHERE subject = $1 AND action IN ('tx.broadcast', 'tx.confirmed') ORDER BY seq",
        )
        .bind(&id)
        .fetch_all(&db)
        .await
        .unwrap();
        let actions: Vec<&str> = actions.iter().map(|(a,)| a.as_str()).collect();
        assert_eq!(actions, ["tx.broadcast", "tx.confirmed"], "node {i}");
    }
}
