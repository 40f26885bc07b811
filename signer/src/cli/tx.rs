//! `signer tx submit|status|approve` and `signer utxos import`: transactions and
//! funding UTXOs through a node's API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::client::{ApiClient, ApiOpts};

/// Largest PSBT file read (the node refuses larger PSBTs anyway).
const MAX_PSBT_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest funding transaction file read (hex text, or the raw transaction).
const MAX_TX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// BIP-174 magic of a binary PSBT.
const PSBT_MAGIC: &[u8] = b"psbt\xff";
/// States after which a transaction changes no more, except `signed` and
/// `broadcast`, which only move on to broadcast/confirmation.
const FINAL_STATES: &[&str] = &["rejected", "failed", "expired", "aborted_byzantine"];
/// States of a transaction that carries its signatures.
const SIGNED_STATES: &[&str] = &["signed", "broadcast", "confirmed"];

/// Exit status of `tx submit --wait` when the transaction ended without being
/// signed (rejected, failed, expired, aborted).
pub const EXIT_NOT_SIGNED: i32 = 3;
/// Exit status of `tx submit --wait` when the wait timed out.
pub const EXIT_WAIT_TIMEOUT: i32 = 4;

/// `signer tx ...`
#[derive(Debug, clap::Subcommand)]
pub enum TxCmd {
    /// Submit a transaction (operator token): a PSBT, or a payment the node builds
    /// from the UTXOs it knows, with change back to the key. With --wait, wait for
    /// the end of voting and signing; exit 3 if it ended unsigned, 4 on timeout.
    Submit {
        /// Key that pays (required with --to; with --psbt, checked against the
        /// key origins of the PSBT's inputs before anything is sent).
        #[arg(long = "key", value_name = "KEY_ID", required_unless_present = "psbt")]
        key_id: Option<String>,
        /// PSBT file: binary (BIP-174) or base64 text.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["to", "amount", "fee_rate"], required_unless_present = "to")]
        psbt: Option<PathBuf>,
        /// Recipient address (network of the cluster).
        #[arg(long, value_name = "ADDR", requires = "amount")]
        to: Option<String>,
        /// Amount to pay, in satoshis.
        #[arg(long, value_name = "SATS", requires = "to")]
        amount: Option<u64>,
        /// Fee rate in sat/vB (default: the node's, 2).
        #[arg(long, value_name = "SAT_VB", requires = "to")]
        fee_rate: Option<u64>,
        /// Wait until the transaction is signed or ends otherwise.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Show one transaction, or list transactions newest first (one page).
    Status {
        /// Transaction id (default: list).
        id: Option<String>,
        /// List only transactions in this state (pending, voting, approved,
        /// signing, signed, broadcast, confirmed, rejected, failed, expired,
        /// aborted_byzantine).
        #[arg(long, conflicts_with = "id")]
        state: Option<String>,
        /// Page size (1 to 500).
        #[arg(long, default_value_t = 50, conflicts_with = "id")]
        limit: u32,
        /// Continue a listing after the `next_cursor` of a previous page.
        #[arg(long, conflicts_with = "id")]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Approve a transaction whose policy needs a human approval: signs
    /// (transaction id, txid) with the approver's own Ed25519 key and submits it
    /// with an approver token. Compare the txid printed with the one you were asked
    /// to approve.
    Approve {
        /// Transaction id.
        id: String,
        /// The approver's registered name.
        #[arg(long)]
        approver: String,
        /// The approver's key file (`signer tx approver-keygen`; mode 0600).
        #[arg(long)]
        key_file: PathBuf,
        /// The txid of the unsigned transaction to approve (default: the one the
        /// node reports as `unsigned_txid`).
        #[arg(long)]
        txid: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Creates an approver key: writes its secret seed (hex) to FILE with mode 0600
    /// and prints the public key to register with `POST /api/v1/approvers` on
    /// `threshold` nodes.
    ApproverKeygen {
        /// Where to write the seed (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `signer utxos ...`
#[derive(Debug, clap::Subcommand)]
pub enum UtxosCmd {
    /// Import the outputs of a funding transaction that pay the cluster's keys
    /// (operator token).
    Import {
        /// The raw transaction, hex.
        #[arg(
            long,
            value_name = "HEX",
            conflicts_with = "file",
            required_unless_present = "file"
        )]
        tx_hex: Option<String>,
        /// File with the raw transaction: hex text or binary.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// API connection.
        #[command(flatten)]
        api: ApiOpts,
    },
}

/// Runs a `tx` subcommand; returns the process exit status.
pub async fn run(cmd: TxCmd) -> anyhow::Result<i32> {
    match cmd {
        TxCmd::Submit {
            key_id,
            psbt,
            to,
            amount,
            fee_rate,
            wait,
            timeout_secs,
            json,
            api,
        } => {
            let body = match (psbt, to, amount) {
                (Some(file), None, None) => json!({ "psbt": read_psbt(&file)? }),
                (None, Some(to), Some(amount)) => {
                    let key_id = key_id
                        .clone()
                        .ok_or_else(|| anyhow::anyhow!("--to needs --key KEY_ID"))?;
                    let mut b = json!({ "key_id": key_id, "recipient": to, "amount_sats": amount });
                    if let Some(r) = fee_rate {
                        b["fee_rate_sat_vb"] = json!(r);
                    }
                    b
                }
                _ => anyhow::bail!("give either --psbt FILE, or --to ADDR and --amount SATS"),
            };
            let client = api.connect().await?;
            if let (Some(k), Some(p)) = (&key_id, body["psbt"].as_str()) {
                check_psbt_key(&client, k, p).await?;
            }
            let v = client.post("/api/v1/transactions", &body).await?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{} answered without an id: {v}", client.label()))?
                .to_owned();
            if !wait {
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!(
                        "transaction {id} accepted by {}: state {}, fee {} sats",
                        client.label(),
                        v["state"].as_str().unwrap_or("?"),
                        v["fee_sats"]
                    );
                }
                return Ok(0);
            }
            let (end, code) = wait_signed(&client, &id, Duration::from_secs(timeout_secs)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&end)?);
            } else {
                print_one(&end);
            }
            if code == EXIT_NOT_SIGNED {
                eprintln!(
                    "error: transaction {id} ended {} on {}: {}",
                    end["state"].as_str().unwrap_or("?"),
                    client.label(),
                    end["failure_reason"]
                        .as_str()
                        .unwrap_or("no reason recorded")
                );
            } else if code == EXIT_WAIT_TIMEOUT {
                eprintln!(
                    "error: transaction {id} was not signed within {timeout_secs} s on {} \
                     (state: {})",
                    client.label(),
                    end["state"].as_str().unwrap_or("?")
                );
            }
            Ok(code)
        }
        TxCmd::Status {
            id,
            state,
            limit,
            cursor,
            json,
            api,
        } => {
            let path = match &id {
                Some(id) => tx_path(id)?,
                None => {
                    let mut q = vec![format!("limit={limit}")];
                    if let Some(s) = &state {
                        q.push(format!("state={}", query_value(s, "--state")?));
                    }
                    if let Some(c) = &cursor {
                        q.push(format!("cursor={}", query_value(c, "--cursor")?));
                    }
                    format!("/api/v1/transactions?{}", q.join("&"))
                }
            };
            let client = api.connect().await?;
            let v = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if id.is_some() {
                print_one(&v);
            } else {
                print_list(&client, &v);
            }
            Ok(0)
        }
        TxCmd::ApproverKeygen { out } => {
            let pk = approver_keygen(&out)?;
            println!("{pk}");
            Ok(0)
        }
        TxCmd::Approve {
            id,
            approver,
            key_file,
            txid,
            json,
            api,
        } => {
            let path = format!("{}/approvals", tx_path(&id)?);
            let client = api.connect().await?;
            let txid = match txid {
                Some(t) => t,
                None => client
                    .get(&tx_path(&id)?)
                    .await?
                    .get("unsigned_txid")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        anyhow::anyhow!("the node does not report the unsigned txid; pass --txid")
                    })?,
            };
            let uuid = uuid::Uuid::parse_str(&id)
                .map_err(|_| anyhow::anyhow!("transaction id must be a uuid"))?;
            let txid: bitcoin::Txid = txid
                .parse()
                .map_err(|e| anyhow::anyhow!("txid {txid}: {e}"))?;
            let signature = sign_approval(&key_file, uuid, txid)?;
            eprintln!("approving transaction {id}, unsigned txid {txid}, as {approver}");
            let v = client
                .post(
                    &path,
                    &json!({ "approver": approver, "signature": signature }),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "approval of transaction {id} recorded by {}: {}",
                    client.label(),
                    serde_json::to_string(&v)?
                );
            }
            Ok(0)
        }
    }
}

/// Runs a `utxos` subcommand.
pub async fn run_utxos(cmd: UtxosCmd) -> anyhow::Result<()> {
    let UtxosCmd::Import {
        tx_hex,
        file,
        json,
        api,
    } = cmd;
    let hex_text = match (tx_hex, file) {
        (Some(h), None) => h.trim().to_owned(),
        (None, Some(f)) => read_tx_file(&f)?,
        _ => anyhow::bail!("give either --tx-hex HEX or --file FILE"),
    };
    anyhow::ensure!(
        !hex_text.is_empty()
            && hex_text.len() % 2 == 0
            && hex_text.bytes().all(|b| b.is_ascii_hexdigit()),
        "the transaction is not hex: give the raw transaction as hex digits (e.g. from \
         `bitcoin-cli getrawtransaction TXID`)"
    );
    let client = api.connect().await?;
    let v = client
        .post("/api/v1/utxos", &json!({ "raw_tx": hex_text }))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = v["imported"].as_array().cloned().unwrap_or_default();
    println!(
        "{} output(s) of the transaction pay the cluster's keys (imported on {}; already \
         known ones are kept as they were)",
        list.len(),
        client.label()
    );
    for u in &list {
        println!(
            "  {}  {:>16} sats  key {}  m/{}/{}",
            u["outpoint"].as_str().unwrap_or("?"),
            u["value_sats"],
            u["key_id"].as_str().unwrap_or("?"),
            u["chain"],
            u["index"]
        );
    }
    Ok(())
}

/// `/api/v1/transactions/{id}` after checking that `id` is a uuid.
fn tx_path(id: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        uuid::Uuid::parse_str(id).is_ok(),
        "transaction id {id:?} is not a uuid"
    );
    Ok(format!("/api/v1/transactions/{id}"))
}

/// A query value that needs no escaping (states and cursors are plain tokens);
/// anything else is refused before a request is made.
fn query_value<'a>(v: &'a str, what: &str) -> anyhow::Result<&'a str> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    anyhow::ensure!(ok, "{what} {v:?} is not valid");
    Ok(v)
}

fn read_bounded(path: &Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} file {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= max,
        "{what} file {} is larger than {max} bytes",
        path.display()
    );
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} file {}: {e}", path.display()))
}

/// The PSBT of `path` as base64 (binary files are encoded, text files trimmed).
fn read_psbt(path: &Path) -> anyhow::Result<String> {
    let raw = read_bounded(path, MAX_PSBT_FILE_BYTES, "PSBT")?;
    if raw.starts_with(PSBT_MAGIC) {
        return Ok(base64::engine::general_purpose::STANDARD.encode(&raw));
    }
    let text = std::str::from_utf8(&raw)
        .map(str::trim)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "PSBT file {} is neither a binary PSBT nor base64 text",
                path.display()
            )
        })?;
    Ok(text.to_owned())
}

/// The funding transaction of `path` as hex (hex text is trimmed, binary encoded).
fn read_tx_file(path: &Path) -> anyhow::Result<String> {
    let raw = read_bounded(path, MAX_TX_FILE_BYTES, "transaction")?;
    match std::str::from_utf8(&raw).map(str::trim) {
        Ok(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(t.to_owned()),
        _ => Ok(hex::encode(&raw)),
    }
}

/// Key-origin fingerprints of a PSBT's inputs (BIP-32 and Taproot origins).
fn psbt_fingerprints(psbt_b64: &str) -> anyhow::Result<Vec<bitcoin::bip32::Fingerprint>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(psbt_b64)
        .map_err(|e| anyhow::anyhow!("the PSBT is not valid base64: {e}"))?;
    let psbt = bitcoin::psbt::Psbt::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("the PSBT does not parse: {e}"))?;
    let mut fps: Vec<_> = psbt
        .inputs
        .iter()
        .flat_map(|i| {
            i.bip32_derivation
                .values()
                .map(|(fp, _)| *fp)
                .chain(i.tap_key_origins.values().map(|(_, (fp, _))| *fp))
        })
        .collect();
    fps.sort();
    fps.dedup();
    Ok(fps)
}

/// Refuses, before submitting, a PSBT whose inputs do not carry the key origin of
/// `key_id` (its fingerprint, from the key's descriptor on the node).
async fn check_psbt_key(client: &ApiClient, key_id: &str, psbt_b64: &str) -> anyhow::Result<()> {
    let fps = psbt_fingerprints(psbt_b64)?;
    let keys = client.get("/api/v1/keys").await?;
    let entry = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["key_id"] == key_id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "key {key_id} is not a key of {}; see `signer keys list`",
                client.label()
            )
        })?;
    let fp = entry["descriptor"]
        .as_str()
        .and_then(|d| d.split_once('[')?.1.split_once(']'))
        .map(|(fp, _)| fp.to_owned())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "key {key_id} has no descriptor on {} (share not loaded)",
                client.label()
            )
        })?;
    anyhow::ensure!(
        fps.iter().any(|f| f.to_string() == fp),
        "the PSBT's inputs do not carry the key origin [{fp}] of key {key_id} (they carry: {}); \
         nothing was submitted",
        if fps.is_empty() {
            "none".to_owned()
        } else {
            fps.iter()
                .map(|f| format!("[{f}]"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    Ok(())
}

/// Polls the transaction until it is signed or ends otherwise; returns its last
/// form and the exit status (0 signed, [`EXIT_NOT_SIGNED`], [`EXIT_WAIT_TIMEOUT`]).
async fn wait_signed(
    client: &ApiClient,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<(Value, i32)> {
    let start = Instant::now();
    let path = tx_path(id)?;
    let spinner = super::progress::Waiting::new(&format!("transaction {id}"));
    loop {
        let v = client.get(&path).await?;
        let state = v["state"].as_str().unwrap_or("");
        spinner.state(state);
        if SIGNED_STATES.contains(&state) {
            return Ok((v, 0));
        }
        if FINAL_STATES.contains(&state) {
            return Ok((v, EXIT_NOT_SIGNED));
        }
        if start.elapsed() >= timeout {
            return Ok((v, EXIT_WAIT_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_one(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    println!("transaction  {}", s("id"));
    println!("state        {}", s("state"));
    println!("key          {}", s("key_id"));
    if let Some(r) = v["recipient"].as_str() {
        println!("recipient    {r}");
        println!("amount       {} sats", v["amount_sats"]);
    }
    println!("fee          {} sats", v["fee_sats"]);
    println!("initiator    {}", s("initiator"));
    println!("leader       {}", s("leader"));
    println!("created      {}", s("created_at"));
    println!("updated      {}", s("updated_at"));
    if let Some(t) = v["txid"].as_str() {
        println!("txid         {t}");
    }
    if let Some(r) = v["failure_reason"].as_str() {
        println!("failure      {r}");
    }
    if let Some(h) = v["signed_tx"].as_str() {
        println!("signed tx    {h}");
    }
}

fn print_list(client: &ApiClient, v: &Value) {
    let list = v["transactions"].as_array().cloned().unwrap_or_default();
    println!("transactions on {}: {} shown", client.label(), list.len());
    if !list.is_empty() {
        println!(
            "{:<36}  {:<17}  {:>14}  {:>8}  {:<19}  KEY",
            "ID", "STATE", "AMOUNT", "FEE", "CREATED"
        );
    }
    for t in &list {
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
        let created = s("created_at");
        println!(
            "{:<36}  {:<17}  {:>14}  {:>8}  {:<19}  {}",
            s("id"),
            s("state"),
            t["amount_sats"]
                .as_i64()
                .map_or("-".into(), |a| a.to_string()),
            t["fee_sats"].as_i64().map_or("-".into(), |a| a.to_string()),
            created.get(..19).unwrap_or(&created),
            s("key_id")
        );
    }
    if let Some(c) = v["next_cursor"].as_str() {
        println!("more: signer tx status --cursor {c}");
    }
}

/// Writes a fresh approver seed (hex) to `out` (created 0600, never overwritten);
/// returns the public key (hex).
fn approver_keygen(out: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut_slice())
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.as_slice())
        .map_err(|_| anyhow::anyhow!("cannot derive the key"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    f.write_all(zeroize::Zeroizing::new(hex::encode(seed.as_slice())).as_bytes())?;
    f.sync_all()?;
    Ok(hex::encode(vote::VoteSigner::vote_public_key(&pair)))
}

/// The approver's signature (hex) over (`id`, `txid`) with the seed in `key_file`
/// (refused unless 0600 and owned by the caller).
fn sign_approval(
    key_file: &std::path::Path,
    id: uuid::Uuid,
    txid: bitcoin::Txid,
) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(key_file).map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    hsm::memory::check_private_file(&meta)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(key_file)?);
    let seed = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|_| anyhow::anyhow!("{}: not a hex seed", key_file.display()))?,
    );
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| anyhow::anyhow!("{}: not a 32-byte seed", key_file.display()))?;
    let sig = vote::VoteSigner::sign_vote_message(&pair, &vote::approval_message(id, txid));
    Ok(hex::encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psbt_files_are_sent_as_base64_whether_binary_or_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("p.psbt");
        std::fs::write(&bin, b"psbt\xff\x01\x00").expect("write");
        assert_eq!(read_psbt(&bin).expect("binary"), "cHNidP8BAA==");
        let txt = dir.path().join("p.txt");
        std::fs::write(&txt, "  cHNidP8BAA==\n").expect("write");
        assert_eq!(read_psbt(&txt).expect("text"), "cHNidP8BAA==");
        std::fs::write(&txt, "\n").expect("write");
        let e = read_psbt(&txt).expect_err("empty").to_string();
        assert!(e.contains("neither a binary PSBT nor base64"), "{e}");
        let e = read_psbt(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read PSBT file"), "{e}");
    }

    #[test]
    fn transaction_files_are_hex_text_or_raw_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tx");
        std::fs::write(&f, "0200ab\n").expect("write");
        assert_eq!(read_tx_file(&f).expect("hex"), "0200ab");
        std::fs::write(&f, [2u8, 0, 0xab]).expect("write");
        assert_eq!(read_tx_file(&f).expect("binary"), "0200ab");
        std::fs::write(&f, vec![b'0'; 3 * 1024 * 1024]).expect("write");
        let e = read_tx_file(&f).expect_err("too large").to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn ids_and_query_values_are_checked_before_any_request() {
        assert!(tx_path("00000000-0000-0000-0000-000000000000").is_ok());
        let e = tx_path("../keys").expect_err("not a uuid").to_string();
        assert!(e.contains("is not a uuid"), "{e}");
        assert!(query_value("signed", "--state").is_ok());
        assert!(query_value("a&b=c", "--state").is_err());
        assert!(query_value("", "--cursor").is_err());
    }

    #[test]
    fn psbt_fingerprints_come_from_both_origin_kinds() {
        let e = psbt_fingerprints("!!").expect_err("bad base64").to_string();
        assert!(e.contains("not valid base64"), "{e}");
        let e = psbt_fingerprints("cHNidP8BAA==")
            .expect_err("bad psbt")
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
    }

    #[test]
    fn an_approver_key_is_written_0600_once_and_signs_verifiable_approvals() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("alice.key");
        let pk = approver_keygen(&f).expect("keygen");
        let mode = std::fs::metadata(&f).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            approver_keygen(&f).is_err(),
            "an existing key is never overwritten"
        );
        let (id, txid) = (
            uuid::Uuid::from_u128(5),
            "11".repeat(32).parse().expect("txid"),
        );
        let sig: [u8; 64] = hex::decode(sign_approval(&f, id, txid).expect("sign"))
            .expect("hex")
            .try_into()
            .expect("64 bytes");
        let pk: [u8; 32] = hex::decode(pk).expect("hex").try_into().expect("32 bytes");
        assert!(vote::verify_approval(&pk, id, txid, &sig));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = sign_approval(&f, id, txid).expect_err("a readable key file is refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
