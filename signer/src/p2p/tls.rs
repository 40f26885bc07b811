//! rustls / quinn configuration: mutual TLS 1.3 against the cluster CA, ring provider.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use zeroize::{Zeroize, Zeroizing};

use super::{P2pConfig, P2pError};
use crate::ca::{self, files};

/// ALPN protocol id of the P2P transport at wire level 1 (every frame kind of the
/// releases before batches).
pub const ALPN: &[u8] = b"signer-p2p/1";
/// ALPN protocol id of wire level 2: level 1 and the batch frames
/// ([`MessageKind::TX_PROPOSE_BATCH`](super::MessageKind::TX_PROPOSE_BATCH),
/// [`MessageKind::TX_VOTE_BATCH`](super::MessageKind::TX_VOTE_BATCH)).
pub const ALPN_V2: &[u8] = b"signer-p2p/2";
/// The highest wire level this build speaks. Both ends of a connection offer every
/// level up to their own; the server picks the highest both offer, so a connection's
/// level is the lower of the two nodes' (a rolling upgrade: an upgraded node learns
/// that a peer still runs the older release from the connection itself).
pub const WIRE_LEVEL: u8 = 2;

/// The ALPN ids a node speaking up to `level` offers or accepts, highest first.
pub(crate) fn alpn_ids(level: u8) -> Vec<Vec<u8>> {
    let mut ids = Vec::with_capacity(2);
    if level >= 2 {
        ids.push(ALPN_V2.to_vec());
    }
    ids.push(ALPN.to_vec());
    ids
}

/// The wire level an ALPN id names (`None`: not one of ours).
pub(crate) fn level_of(alpn: &[u8]) -> Option<u8> {
    match alpn {
        ALPN => Some(1),
        ALPN_V2 => Some(2),
        _ => None,
    }
}
/// Most uni-streams (frames) a peer may have open towards this node at once; also
/// the number of frames read ahead per connection.
pub(crate) const MAX_CONCURRENT_FRAMES: u32 = 16;

/// Installs rustls' ring crypto provider as the process default.
///
/// Idempotent. This crate builds every rustls configuration with an explicit ring
/// provider, but other libraries in the process (reqwest, tokio-rustls users) may
/// rely on the process default, and with both ring and aws-lc-rs compiled in
/// rustls panics unless one is installed.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates and key of one node.
pub(crate) struct Identity {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Identity {
    /// Loads the CA, certificate chain and key named in `cfg`.
    pub(crate) fn load(cfg: &P2pConfig) -> Result<Self, P2pError> {
        let mut roots = RootCertStore::empty();
        for ca_cert in files::read_cert_chain(&cfg.ca_cert)? {
            roots.add(ca_cert).map_err(|e| {
                P2pError::Config(format!(
                    "ca certificate {} is not usable: {e}",
                    cfg.ca_cert.display()
                ))
            })?;
        }
        let chain = files::read_cert_chain(&cfg.cert)?;
        let key = files::read_private_key(&cfg.key)?;
        let leaf = chain.first().ok_or_else(|| {
            P2pError::Config(format!("{} holds no certificate", cfg.cert.display()))
        })?;
        let identity = ca::node_identity_from_cert(leaf)?;
        if identity != cfg.node_id {
            return Err(P2pError::Config(format!(
                "certificate {} is for node {identity:?}, not {:?}",
                cfg.cert.display(),
                cfg.node_id
            )));
        }
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// Checks this node's own certificate against the CA, as peers will.
    pub(crate) fn self_check(&self) -> Result<(), String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let (leaf, intermediates) = self.chain.split_first().ok_or("empty chain")?;
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Endpoint configuration whose stateless-reset key and connection-id key are
    /// derived from the node's private key. A node restarted on the same address
    /// thus recognises the connection ids of its previous incarnation and resets
    /// those connections at once, instead of peers waiting for the idle timeout.
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.secret_der());
        let reset = ring::hmac::sign(&secret, b"signer p2p quic stateless reset key v1");
        let reset = Zeroizing::new(reset.as_ref().to_vec());
        let cid = ring::hmac::sign(&secret, b"signer p2p quic connection id key v1");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);

        let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset,
        )));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

/// Transport parameters shared by client and server side.
pub(crate) fn transport(cfg: &P2pConfig) -> Result<Arc<quinn::TransportConfig>, P2pError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|_| {
        P2pError::Config(format!("idle_timeout {:?} is too large", cfg.idle_timeout))
    })?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(cfg.keep_alive));
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(MAX_CONCURRENT_FRAMES.into());
    t.datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

/// Server side: requires a client certificate chaining to the CA.
pub(crate) fn server_config(
    id: &Identity,
    transport: Arc<quinn::TransportConfig>,
    level: u8,
) -> Result<quinn::ServerConfig, P2pError> {
    let provider = provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider.clone())
            .build()
            .map_err(|e| P2pError::Config(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = alpn_ids(level);
    // Full handshakes only: every connection re-verifies the peer certificate.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| P2pError::Config(format!("quic server config: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport);
    Ok(server)
}

/// Client side: presents the node certificate, trusts only the CA.
pub(crate) fn client_config(
    id: &Identity,
    transport: Arc<quinn::TransportConfig>,
    level: u8,
) -> Result<quinn::ClientConfig, P2pError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(id.roots.clone())
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    tls.alpn_protocols = alpn_ids(level);
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| P2pError::Config(format!("quic client config: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport);
    Ok(client)
}

/// How long a handshake (either direction) may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a prospective peer's certificate (PEM) before it joins the live peer set:
/// it must chain to the cluster CA in `ca_cert`, be valid now, and carry exactly
/// the identity `expected_id` — the checks its mTLS handshake will pass. Returns a
/// short reason on refusal.
pub fn verify_peer_certificate(
    ca_cert: &std::path::Path,
    pem: &[u8],
    expected_id: &str,
) -> Result<(), String> {
    if pem.len() as u64 > ca::MAX_PEM_BYTES {
        return Err("certificate too large".to_owned());
    }
    let mut roots = RootCertStore::empty();
    for c in files::read_cert_chain(ca_cert).map_err(|e| format!("cluster ca: {e}"))? {
        roots
            .add(c)
            .map_err(|e| format!("cluster ca not usable: {e}"))?;
    }
    let chain = files::parse_cert_chain_pem(pem, std::path::Path::new("<request>"))
        .map_err(|_| "not a PEM certificate".to_owned())?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| format!("not issued by the cluster ca or not valid now: {e}"))?;
    let id = ca::node_identity_from_cert(leaf).map_err(|e| e.to_string())?;
    if id != expected_id {
        return Err(format!(
            "certificate is for node {id:?}, not {expected_id:?}"
        ));
    }
    Ok(())
}
