//! Wallet keys: scripts, addresses, descriptors and script-to-path lookup.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bitcoin::bip32::{ChildNumber, Fingerprint, Xpub};
use bitcoin::key::XOnlyPublicKey;
use bitcoin::secp256k1::{self, PublicKey, Secp256k1};
use bitcoin::{Address, CompressedPublicKey, Network, NetworkKind, Script, ScriptBuf};
use serde::{Deserialize, Serialize};

use super::error::WalletError;

/// Receive chain index (`m/0/*`).
pub const RECEIVE_CHAIN: u32 = 0;
/// Change chain index (`m/1/*`).
pub const CHANGE_CHAIN: u32 = 1;
/// Default number of indexes per chain [`WalletKey::find_path`] looks at.
pub const DEFAULT_GAP: u32 = 1000;
/// Largest lookahead a key accepts (per chain), to bound memory and start-up work.
pub const MAX_GAP: u32 = 100_000;
/// Paths per generation of a path memory of [`WalletKey::owns_at`] (scripts beyond
/// the lookahead) or [`WalletKey::pubkey_at`] (public keys). A memory holds at
/// most two generations (about 0.8 MiB per key and memory). A node's paths in use
/// are those of its transactions in flight and the coins it selects from, which
/// the newer generation holds; older paths are derived again when asked.
pub const MEMO_GENERATION: usize = 4_096;

/// Values derived at `m/chain/index`, remembered by path, shared by a key's
/// clones. Two generations: new values go into the current one; when it is full
/// it becomes the previous one and the older generation is dropped, and a value
/// read from the previous generation moves into the current one. So what is in
/// use stays, and the memory holds at most twice [`MEMO_GENERATION`] values and
/// never grows past that (a node runs for months and every payment's change
/// output is a new index).
struct PathMemo<V>(Mutex<Generations<V>>);

struct Generations<V> {
    current: HashMap<(u32, u32), V>,
    previous: HashMap<(u32, u32), V>,
}

impl<V> Default for PathMemo<V> {
    fn default() -> Self {
        Self(Mutex::new(Generations {
            current: HashMap::new(),
            previous: HashMap::new(),
        }))
    }
}

impl<V> PathMemo<V> {
    /// `read` of the value remembered at `path`, if there is one (under the lock,
    /// so nothing is copied).
    fn read<R>(&self, path: (u32, u32), read: impl FnOnce(&V) -> R) -> Option<R> {
        let mut g = self.lock();
        if let Some(v) = g.current.get(&path) {
            return Some(read(v));
        }
        let v = g.previous.remove(&path)?;
        let r = read(&v);
        g.insert(path, v);
        Some(r)
    }

    fn remember(&self, path: (u32, u32), value: V) {
        self.lock().insert(path, value);
    }

    /// How many values are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<V>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V> Generations<V> {
    fn insert(&mut self, path: (u32, u32), value: V) {
        if self.current.len() >= MEMO_GENERATION && !self.current.contains_key(&path) {
            // The table of a full generation is reused for the next one: its
            // capacity was reached once and stays, so the memory never reallocates.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(path, value);
    }
}

/// The process-wide secp256k1 context (signing + verification tables).
pub(crate) fn secp() -> &'static Secp256k1<secp256k1::All> {
    static CTX: OnceLock<Secp256k1<secp256k1::All>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::new)
}

/// How a threshold key spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// CGGMP24 ECDSA key, P2WPKH outputs, BIP-143 sighashes.
    Ecdsa,
    /// FROST Schnorr key, P2TR key-path outputs with the BIP-86 tweak, BIP-341
    /// sighashes.
    Taproot,
}

impl KeyKind {
    /// `ecdsa` or `taproot` (the `key_type` of `GET /api/v1/keys`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ecdsa => "ecdsa",
            KeyKind::Taproot => "taproot",
        }
    }

    /// Virtual size of one signed input of this kind (P2WPKH 68 vB, P2TR key path
    /// 58 vB): coin selection skips outputs worth less than their own input fee.
    pub fn input_vbytes(self) -> u64 {
        match self {
            KeyKind::Ecdsa => 68,
            KeyKind::Taproot => 58,
        }
    }

    /// True if `script` has the shape this kind pays to.
    pub fn matches_script(self, script: &Script) -> bool {
        match self {
            KeyKind::Ecdsa => script.is_p2wpkh(),
            KeyKind::Taproot => script.is_p2tr(),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A watch-only threshold key as the wallet sees it: the master xpub (public key and
/// chain code of the threshold key, depth 0), the kind of output it pays to and the
/// network. Scripts live at `m/chain/index` (non-hardened), chain 0 receive, chain 1
/// change, exactly as the exported descriptors `wpkh([fp]xpub/<0;1>/*)` and
/// `tr([fp]xpub/<0;1>/*)` say.
///
/// Cheap to clone; the script lookup table is built once, on first use, and shared.
#[derive(Clone)]
pub struct WalletKey {
    key_id: String,
    kind: KeyKind,
    xpub: Xpub,
    network: Network,
    gap: u32,
    lookup: Arc<OnceLock<HashMap<ScriptBuf, (u32, u32)>>>,
    /// Scripts derived beyond the lookahead (change indexes grow past it), by path.
    beyond: Arc<PathMemo<ScriptBuf>>,
    /// Public keys derived by [`WalletKey::pubkey_at`], by path (at most
    /// twice [`MEMO_GENERATION`]): every node checks the key origins of every
    /// proposal's inputs and change output, and a BIP-32 derivation is two
    /// HMAC-SHA512s and two point additions.
    pubkeys: Arc<PathMemo<PublicKey>>,
}

impl fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletKey")
            .field("key_id", &self.key_id)
            .field("kind", &self.kind)
            .field("fingerprint", &self.fingerprint())
            .field("network", &self.network)
            .field("gap", &self.gap)
            .finish_non_exhaustive()
    }
}

/// A script found by [`WalletKey::find_path`] or in a key origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScriptPath {
    /// 0 receive, 1 change.
    pub chain: u32,
    /// Index in the chain.
    pub index: u32,
}

impl ScriptPath {
    /// The full derivation path below the master key: `[chain, index]`.
    pub fn to_vec(self) -> Vec<u32> {
        vec![self.chain, self.index]
    }
}

impl WalletKey {
    /// A key with the default lookahead of [`DEFAULT_GAP`] indexes per chain.
    ///
    /// The xpub's own network byte is ignored; `network` decides addresses and the
    /// encoding in descriptors.
    pub fn new(key_id: impl Into<String>, kind: KeyKind, xpub: Xpub, network: Network) -> Self {
        Self {
            key_id: key_id.into(),
            kind,
            xpub,
            network,
            gap: DEFAULT_GAP,
            lookup: Arc::new(OnceLock::new()),
            beyond: Arc::default(),
            pubkeys: Arc::default(),
        }
    }

    /// Parses the xpub from its base58 form (as `LoadedKey::xpub` stores it).
    pub fn from_xpub_str(
        key_id: impl Into<String>,
        kind: KeyKind,
        xpub: &str,
        network: Network,
    ) -> Result<Self, WalletError> {
        let x = Xpub::from_str(xpub)
            .map_err(|e| WalletError::DerivationInvalid(format!("xpub does not parse: {e}")))?;
        Ok(Self::new(key_id, kind, x, network))
    }

    /// Sets the lookahead per chain (1 to [`MAX_GAP`]) used by [`Self::find_path`].
    pub fn with_gap(mut self, gap: u32) -> Result<Self, WalletError> {
        if gap == 0 || gap > MAX_GAP {
            return Err(WalletError::DerivationInvalid(format!(
                "lookahead of {gap} is outside 1 to {MAX_GAP}"
            )));
        }
        self.gap = gap;
        self.lookup = Arc::new(OnceLock::new());
        self.beyond = Arc::default();
        Ok(self)
    }

    /// Key id (the ceremony id).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Output kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Master xpub.
    pub fn xpub(&self) -> &Xpub {
        &self.xpub
    }

    /// Network of addresses.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Lookahead per chain.
    pub fn gap(&self) -> u32 {
        self.gap
    }

    /// BIP-32 fingerprint of the master key (the `[fp]` of the descriptors).
    pub fn fingerprint(&self) -> Fingerprint {
        self.xpub.fingerprint()
    }

    /// The xpub as encoded for this key's network (`xpub` on mainnet, `tpub`
    /// elsewhere).
    pub fn xpub_for_network(&self) -> Xpub {
        Xpub {
            network: NetworkKind::from(self.network),
            ..self.xpub
        }
    }

    /// Public key at `m/chain/index`.
    ///
    /// Derived once per path and remembered (a derivation is deterministic: the
    /// remembered key is exactly what deriving again would give).
    pub fn pubkey_at(&self, chain: u32, index: u32) -> Result<PublicKey, WalletError> {
        if let Some(pk) = self.pubkeys.read((chain, index), |pk| *pk) {
            return Ok(pk);
        }
        let path = [normal(chain)?, normal(index)?];
        let pk = self
            .xpub
            .derive_pub(secp(), &path)
            .map(|x| x.public_key)
            .map_err(|e| WalletError::DerivationInvalid(format!("m/{chain}/{index}: {e}")))?;
        self.pubkeys.remember((chain, index), pk);
        Ok(pk)
    }

    /// For taproot keys: the BIP-86 internal (untweaked) x-only key at
    /// `m/chain/index`. For ECDSA keys: the x-only form of the key (unused in scripts).
    pub fn internal_key_at(&self, chain: u32, index: u32) -> Result<XOnlyPublicKey, WalletError> {
        Ok(self.pubkey_at(chain, index)?.x_only_public_key().0)
    }

    /// scriptPubKey at `m/chain/index`.
    pub fn script_at(&self, chain: u32, index: u32) -> Result<ScriptBuf, WalletError> {
        let pk = self.pubkey_at(chain, index)?;
        Ok(self.script_for(pk))
    }

    fn script_for(&self, pk: PublicKey) -> ScriptBuf {
        match self.kind {
            KeyKind::Ecdsa => ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash()),
            KeyKind::Taproot => ScriptBuf::new_p2tr(secp(), pk.x_only_public_key().0, None),
        }
    }

    /// Address at `m/chain/index`.
    pub fn address_at(&self, chain: u32, index: u32) -> Result<Address, WalletError> {
        Ok(self.address_for(self.pubkey_at(chain, index)?))
    }

    /// The address this key's kind makes of `pk` (a key derived from this key) on
    /// this key's network.
    pub fn address_for(&self, pk: PublicKey) -> Address {
        match self.kind {
            KeyKind::Ecdsa => Address::p2wpkh(&CompressedPublicKey(pk), self.network),
            KeyKind::Taproot => Address::p2tr(secp(), pk.x_only_public_key().0, None, self.network),
        }
    }

    /// Receive script at `m/0/index`.
    pub fn receive_script(&self, index: u32) -> Result<ScriptBuf, WalletError> {
        self.script_at(RECEIVE_CHAIN, index)
    }

    /// Change script at `m/1/index`.
    pub fn change_script(&self, index: u32) -> Result<ScriptBuf, WalletError> {
        self.script_at(CHANGE_CHAIN, index)
    }

    /// Receive address at `m/0/index`.
    pub fn receive_address(&self, index: u32) -> Result<Address, WalletError> {
        self.address_at(RECEIVE_CHAIN, index)
    }

    /// Change address at `m/1/index`.
    pub fn change_address(&self, index: u32) -> Result<Address, WalletError> {
        self.address_at(CHANGE_CHAIN, index)
    }

    /// The exported multipath descriptor, `wpkh([fp]xpub/<0;1>/*)` or
    /// `tr([fp]xpub/<0;1>/*)`, without checksum (the form `GET /api/v1/keys` shows
    /// and policies name in `allow_descriptors`).
    pub fn descriptor(&self) -> String {
        format!("{}/<0;1>/*)", self.descriptor_prefix())
    }

    /// The multipath descriptor with its BIP-380 checksum, `…/<0;1>/*)#…`.
    pub fn descriptor_with_checksum(&self) -> String {
        with_checksum(self.descriptor())
    }

    /// Single-path descriptors with BIP-380 checksums, `(receive, change)`:
    /// `wpkh([fp]xpub/0/*)#…` and `wpkh([fp]xpub/1/*)#…`, the form wallets that do
    /// not take multipath descriptors (older Bitcoin Core, BDK) import.
    pub fn single_path_descriptors(&self) -> (String, String) {
        let p = self.descriptor_prefix();
        (
            with_checksum(format!("{p}/0/*)")),
            with_checksum(format!("{p}/1/*)")),
        )
    }

    fn descriptor_prefix(&self) -> String {
        let f = match self.kind {
            KeyKind::Ecdsa => "wpkh",
            KeyKind::Taproot => "tr",
        };
        format!("{f}([{}]{}", self.fingerprint(), self.xpub_for_network())
    }

    /// Finds where `script` derives from, looking at indexes `0..gap` of both chains.
    /// The table is built on first call (about `2 * gap` derivations) and cached.
    pub fn find_path(&self, script: &Script) -> Option<ScriptPath> {
        if !self.kind.matches_script(script) {
            return None;
        }
        self.table()
            .get(script)
            .map(|&(chain, index)| ScriptPath { chain, index })
    }

    /// Builds the lookup table of [`Self::find_path`] now (it is shared by clones).
    pub fn warm_lookup(&self) {
        let _ = self.table();
    }

    /// Checks that `script` is this key's script at `path` (any index, also beyond
    /// the lookahead): how key origins carried by a PSBT, and the paths stored with
    /// a node's UTXOs, are confirmed.
    ///
    /// Coin selection checks every candidate UTXO this way, so a derivation (two
    /// BIP-32 steps and, for Taproot, the output tweak) is done once per path while
    /// the path is in use: within the lookahead, once the lookup table of [`Self::find_path`] is
    /// built (by [`Self::warm_lookup`] or a first `find_path`), the answer is a
    /// table lookup, the table holding exactly the scripts derived at those paths;
    /// beyond it, a derived script is remembered by path (the paths used most
    /// recently, at most twice [`MEMO_GENERATION`]). This call never builds the
    /// table itself.
    pub fn owns_at(&self, script: &Script, path: ScriptPath) -> bool {
        if path.chain > CHANGE_CHAIN || !self.kind.matches_script(script) {
            return false;
        }
        if path.index < self.gap {
            if let Some(table) = self.lookup.get() {
                return table.get(script) == Some(&(path.chain, path.index));
            }
            return matches!(self.script_at(path.chain, path.index), Ok(s) if s.as_script() == script);
        }
        let key = (path.chain, path.index);
        if let Some(same) = self.beyond.read(key, |s| s.as_script() == script) {
            return same;
        }
        let Ok(derived) = self.script_at(path.chain, path.index) else {
            return false;
        };
        let same = derived.as_script() == script;
        self.beyond.remember(key, derived);
        same
    }

    fn table(&self) -> &HashMap<ScriptBuf, (u32, u32)> {
        self.lookup.get_or_init(|| {
            let mut map = HashMap::with_capacity(2 * self.gap as usize);
            for chain in [RECEIVE_CHAIN, CHANGE_CHAIN] {
                let Ok(chain_xpub) = normal(chain).and_then(|c| {
                    self.xpub
                        .ckd_pub(secp(), c)
                        .map_err(|e| WalletError::DerivationInvalid(e.to_string()))
                }) else {
                    tracing::error!(key = %self.key_id, chain, "cannot derive the chain key");
                    continue;
                };
                for index in 0..self.gap {
                    match normal(index).and_then(|i| {
                        chain_xpub
                            .ckd_pub(secp(), i)
                            .map_err(|e| WalletError::DerivationInvalid(e.to_string()))
                    }) {
                        Ok(child) => {
                            map.insert(self.script_for(child.public_key), (chain, index));
                        }
                        // probability ~2^-127 per index (BIP-32 invalid child)
                        Err(e) => {
                            tracing::warn!(key = %self.key_id, chain, index, error = %e, "index skipped")
                        }
                    }
                }
            }
            map
        })
    }
}

/// `descriptor#checksum` (BIP-380); the descriptors built here only use characters
/// of the checksum's set, so the checksum always exists.
fn with_checksum(d: String) -> String {
    match policy::descriptor::checksum(&d) {
        Some(c) => format!("{d}#{c}"),
        None => d,
    }
}

fn normal(i: u32) -> Result<ChildNumber, WalletError> {
    ChildNumber::from_normal_idx(i)
        .map_err(|_| WalletError::DerivationInvalid(format!("index {i} is hardened")))
}

#[cfg(test)]
mod memo_tests {
    use super::{PathMemo, MEMO_GENERATION};

    /// A node signs for months and every payment's change output is a new index:
    /// the memory stays bounded however many paths pass through it, and a path in
    /// use (read again while newer ones arrive) is still remembered.
    #[test]
    fn a_path_memory_stays_bounded_and_keeps_the_paths_in_use() {
        let memo: PathMemo<u32> = PathMemo::default();
        memo.remember((1, 0), 7);
        for index in 1..(10 * MEMO_GENERATION as u32) {
            memo.remember((1, index), index);
            assert!(memo.len() <= 2 * MEMO_GENERATION, "{} paths", memo.len());
            if index % (MEMO_GENERATION as u32 / 2) == 0 {
                assert_eq!(
                    memo.read((1, 0), |v| *v),
                    Some(7),
                    "path in use lost at {index}"
                );
            }
        }
        // The newest paths are there; one not read since several generations is not.
        let last = 10 * MEMO_GENERATION as u32 - 1;
        assert_eq!(memo.read((1, last), |v| *v), Some(last));
        assert_eq!(memo.read((1, 1), |v| *v), None);
    }
}
