//! Bearer tokens with roles, and per-token rate limiting.
//!
//! A token reads `sgn_<id>_<secret>`: `id` is public (16 lower-case alphanumerics),
//! `secret` is 32 random bytes in hex. The secret has 256 bits of entropy, so a slow
//! password hash buys nothing: the database holds a keyed hash,
//! `hmac-sha256$v1$<hex>` = HMAC-SHA-256(K, "signer-api-token/v1" ‖ id ‖ secret),
//! where K is the node's token key, sealed by its custody (HSM/TPM envelope in
//! `node_keys`, purpose [`TOKEN_KEY_PURPOSE`]) and opened at unseal.
//!
//! Tokens written before the node had its key (`signer cluster up`, `signer token
//! create`, which run without the node's HSM session) hold the unkeyed enrolment
//! form `sha256$v1$<hex>`; tokens of older versions hold an argon2id PHC string.
//! Both are accepted and rewritten to the keyed form at their first successful use.
//!
//! Order of checks per request (finding 1 of issue 16): a cached verification is a
//! constant-time digest comparison; anything else first takes a unit from the
//! client address's budget (`api.unauthenticated_rate_limit_per_min`; 429 when it is
//! spent) and only then verifies, with at most [`VERIFY_PERMITS`] verifications
//! (and one legacy argon2 run) at a time. A successful verification gives its unit
//! back, so valid tokens never spend the address's budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::AppState;
use crate::store::tokens::TokenRow;

/// Maximum length of an Authorization header we look at.
const MAX_AUTH_HEADER: usize = 256;
/// How long a verified token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Token verifications (database lookup and hash) running at once.
pub const VERIFY_PERMITS: usize = 4;
/// How long a request waits for a verification permit before 503.
const VERIFY_WAIT: Duration = Duration::from_secs(5);
/// Client addresses tracked by the per-address limiter; beyond this, new addresses
/// share one more budget until pruning frees room.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;
/// How often idle per-address buckets are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// `node_keys.purpose` of the sealed API token key.
pub const TOKEN_KEY_PURPOSE: &str = "api_token_mac";
/// Prefix of the keyed form of a stored token hash.
pub const KEYED_PREFIX: &str = "hmac-sha256$v1$";
/// Prefix of the unkeyed enrolment form (written without the node's key).
pub const ENROL_PREFIX: &str = "sha256$v1$";
const MAC_DOMAIN: &[u8] = b"signer-api-token/v1\0";
const ENROL_DOMAIN: &[u8] = b"signer-api-token-enrol/v1\0";
const CHECK_DOMAIN: &[u8] = b"signer-api-token-key-check/v1";

/// Token roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including token management.
    Admin,
    /// Submits transactions and starts ceremonies.
    Operator,
    /// Gives human approvals.
    Approver,
    /// Reads the audit trail.
    Auditor,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// The authenticated caller, put into request extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id (used as the actor in the audit log).
    pub token_id: String,
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
}

impl Principal {
    /// Admins pass every check; others need one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.role == Role::Admin || roles.contains(&self.role) {
            Ok(())
        } else {
            let wanted: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "role {} may not do this; needs {}",
                self.role.as_str(),
                if wanted.is_empty() {
                    "admin".to_owned()
                } else {
                    format!("admin or {}", wanted.join(", "))
                }
            )))
        }
    }
}

/// The node's API token key: HMAC-SHA-256, 32 random bytes generated by the node
/// and stored only sealed by its custody. `Debug` shows the check value only.
pub struct TokenKey {
    key: ring::hmac::Key,
    check: [u8; 16],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("check", &hex::encode(self.check))
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl TokenKey {
    /// Length of the key in bytes.
    pub const LEN: usize = 32;

    /// The key from its 32 secret bytes; `None` for another length.
    pub fn from_bytes(secret: &[u8]) -> Option<TokenKey> {
        if secret.len() != Self::LEN {
            return None;
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, CHECK_DOMAIN);
        let mut check = [0u8; 16];
        check.copy_from_slice(&tag.as_ref()[..16]);
        Some(TokenKey { key, check })
    }

    /// A public check value (first 16 bytes of the MAC of a constant): tells which
    /// key a node holds without revealing it; stored as the row's `public_key`.
    pub fn check_value(&self) -> [u8; 16] {
        self.check
    }

    fn message(id: &str, secret_hex: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(MAC_DOMAIN.len() + id.len() + 1 + secret_hex.len());
        m.extend_from_slice(MAC_DOMAIN);
        m.extend_from_slice(id.as_bytes());
        m.push(0);
        m.extend_from_slice(secret_hex.as_bytes());
        m
    }

    /// The stored form `hmac-sha256$v1$<hex>` of a token.
    pub fn stored_hash(&self, id: &str, secret_hex: &str) -> String {
        let m = zeroize::Zeroizing::new(Self::message(id, secret_hex));
        let tag = ring::hmac::sign(&self.key, &m);
        format!("{KEYED_PREFIX}{}", hex::encode(tag.as_ref()))
    }

    /// Constant-time check of `secret_hex` against a keyed tag.
    fn verify(&self, id: &str, secret_hex: &str, tag: &[u8]) -> bool {
        let m = zeroize::Zeroizing::new(Self::message(id, secret_hex));
        ring::hmac::verify(&self.key, &m, tag).is_ok()
    }
}

/// The unkeyed enrolment digest of a token (see the module documentation).
fn enrol_digest(id: &str, secret_hex: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENROL_DOMAIN);
    h.update(id.as_bytes());
    h.update([0u8]);
    h.update(secret_hex.as_bytes());
    h.finalize().into()
}

/// A stored hash, by form.
enum Stored {
    Keyed([u8; 32]),
    Enrol([u8; 32]),
    Argon2,
    Unknown,
}

fn parse_stored(s: &str) -> Stored {
    let hex32 = |h: &str| -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).ok().map(|()| out)
    };
    if let Some(h) = s.strip_prefix(KEYED_PREFIX) {
        hex32(h).map_or(Stored::Unknown, Stored::Keyed)
    } else if let Some(h) = s.strip_prefix(ENROL_PREFIX) {
        hex32(h).map_or(Stored::Unknown, Stored::Enrol)
    } else if s.starts_with("$argon2id$") {
        Stored::Argon2
    } else {
        Stored::Unknown
    }
}

/// A freshly generated token; the full string is shown once and never stored.
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// The full bearer token.
    pub token: SecretString,
    /// The stored form of the secret: keyed (`hmac-sha256$v1$…`) when generated
    /// with the node's key, else the enrolment form (`sha256$v1$…`).
    pub secret_hash: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

fn new_id_and_secret() -> (String, zeroize::Zeroizing<String>) {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut idb = [0u8; 16];
    rng.fill_bytes(&mut idb);
    let id: String = idb
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut());
    (id, zeroize::Zeroizing::new(hex::encode(secret.as_slice())))
}

/// Generates a token in the enrolment form, for writers that do not hold the
/// node's key (`signer cluster up`, `signer token create`); the node rewrites it to
/// the keyed form at its first use.
pub fn generate_token() -> Result<NewToken, ApiError> {
    let (id, secret_hex) = new_id_and_secret();
    let secret_hash = format!(
        "{ENROL_PREFIX}{}",
        hex::encode(enrol_digest(&id, &secret_hex))
    );
    Ok(NewToken {
        token: SecretString::from(format!("sgn_{id}_{}", secret_hex.as_str())),
        id,
        secret_hash,
    })
}

/// Generates a token in the keyed form (the node's API).
pub fn generate_token_with(key: &TokenKey) -> NewToken {
    let (id, secret_hex) = new_id_and_secret();
    let secret_hash = key.stored_hash(&id, &secret_hex);
    NewToken {
        token: SecretString::from(format!("sgn_{id}_{}", secret_hex.as_str())),
        id,
        secret_hash,
    }
}

/// The token id and the stored hash (enrolment form) of an existing token, to
/// install the same token on another node (`signer cluster add-node`).
pub fn enrolment_form(token: &str) -> Option<(String, String)> {
    let (id, secret) = parse_token(token)?;
    Some((
        id.to_owned(),
        format!("{ENROL_PREFIX}{}", hex::encode(enrol_digest(id, secret))),
    ))
}

/// Splits a bearer token into (id, secret).
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("sgn_")?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret_ok).then_some((id, secret))
}

struct Cached {
    secret_digest: [u8; 32],
    principal: Principal,
    limiter: Arc<DefaultDirectRateLimiter>,
    verified_at: Instant,
}

/// A token bucket per client address: `per_min` units, refilled continuously.
/// Units are taken before a verification and given back when it succeeds.
struct ClientLimiter {
    per_min: f64,
    inner: Mutex<ClientBuckets>,
}

struct ClientBuckets {
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_prune: Instant,
}

/// Key of the budget shared by addresses beyond [`MAX_TRACKED_CLIENTS`].
const OVERFLOW_KEY: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

impl ClientLimiter {
    fn new(per_min: u32) -> Self {
        ClientLimiter {
            per_min: f64::from(per_min.max(1)),
            inner: Mutex::new(ClientBuckets {
                buckets: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientBuckets> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn refill(&self, level: f64, since: Instant, now: Instant) -> f64 {
        let add = now.saturating_duration_since(since).as_secs_f64() * self.per_min / 60.0;
        (level + add).min(self.per_min)
    }

    /// Takes one unit for `ip`; `Err(seconds)` to wait when none is left.
    fn take(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut g = self.lock();
        if now.saturating_duration_since(g.last_prune) >= PRUNE_EVERY
            || (g.buckets.len() >= MAX_TRACKED_CLIENTS && !g.buckets.contains_key(&ip))
        {
            self.prune(&mut g, now);
        }
        let key = if g.buckets.len() >= MAX_TRACKED_CLIENTS && !g.buckets.contains_key(&ip) {
            OVERFLOW_KEY
        } else {
            ip
        };
        let full = self.per_min;
        let (level, at) = g.buckets.get(&key).copied().unwrap_or((full, now));
        let level = self.refill(level, at, now);
        if level >= 1.0 {
            g.buckets.insert(key, (level - 1.0, now));
            Ok(())
        } else {
            g.buckets.insert(key, (level, now));
            let wait = (1.0 - level) * 60.0 / self.per_min;
            // Bounded: at most 60 s per unit by construction.
            Err(Duration::from_secs_f64(wait.clamp(0.0, 3600.0))
                .as_secs()
                .max(1))
        }
    }

    /// Gives back the unit taken for a request whose token turned out valid.
    fn give_back(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut g = self.lock();
        let full = self.per_min;
        if let Some((level, at)) = g.buckets.get(&ip).copied() {
            let level = (self.refill(level, at, now) + 1.0).min(full);
            g.buckets.insert(ip, (level, now));
        }
    }

    /// Drops buckets that have refilled completely (they hold no information).
    fn prune(&self, g: &mut ClientBuckets, now: Instant) {
        let full = self.per_min;
        g.buckets
            .retain(|_, (level, at)| self.refill(*level, *at, now) < full);
        g.last_prune = now;
    }

    fn tracked(&self) -> usize {
        self.lock().buckets.len()
    }
}

/// One legacy argon2 verification for the worker thread.
struct Argon2Job {
    hash: String,
    secret: zeroize::Zeroizing<String>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

fn argon2_worker(jobs: std::sync::mpsc::Receiver<Argon2Job>) {
    while let Ok(job) = jobs.recv() {
        let ok = PasswordHash::new(&job.hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(job.secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let _ = job.reply.send(ok);
    }
}

/// Token cache, token key and rate limiters.
pub struct AuthState {
    cache: Mutex<HashMap<String, Cached>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    clients: ClientLimiter,
    key: RwLock<Option<Arc<TokenKey>>>,
    verify_permits: Semaphore,
    argon2_permits: Semaphore,
    argon2_jobs: Mutex<Option<std::sync::mpsc::Sender<Argon2Job>>>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState").finish_non_exhaustive()
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl AuthState {
    /// New state; `unauth_per_min` bounds requests without a valid token per client.
    pub fn new(unauth_per_min: u32) -> Self {
        AuthState {
            cache: Mutex::new(HashMap::new()),
            limiters: Mutex::new(HashMap::new()),
            clients: ClientLimiter::new(unauth_per_min),
            key: RwLock::new(None),
            verify_permits: Semaphore::new(VERIFY_PERMITS),
            argon2_permits: Semaphore::new(1),
            argon2_jobs: Mutex::new(None),
        }
    }

    /// Installs the node's token key (at unseal).
    pub fn set_token_key(&self, key: TokenKey) {
        let key = Arc::new(key);
        match self.key.write() {
            Ok(mut g) => *g = Some(key),
            Err(p) => *p.into_inner() = Some(key),
        }
    }

    /// The node's token key, once unsealed.
    pub fn token_key(&self) -> Option<Arc<TokenKey>> {
        match self.key.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Client addresses the per-address limiter currently tracks.
    pub fn tracked_clients(&self) -> usize {
        self.clients.tracked()
    }

    /// Forgets a token (after revocation).
    pub fn forget(&self, token_id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(token_id);
        }
    }

    /// Forgets every cached verification (each token is read again at its next use).
    pub fn forget_all(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    fn limiter_for(&self, token_id: &str, per_min: u32) -> Arc<DefaultDirectRateLimiter> {
        let mut map = match self.limiters.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(token_id.to_owned())
            .or_insert_with(|| Arc::new(RateLimiter::direct(per_minute(per_min))))
            .clone()
    }

    /// The legacy argon2 worker thread, started at its first use.
    fn argon2_worker(&self) -> Result<std::sync::mpsc::Sender<Argon2Job>, ApiError> {
        let mut g = self.argon2_jobs.lock().map_err(ApiError::internal)?;
        if let Some(tx) = g.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("argon2-legacy".to_owned())
            .spawn(move || argon2_worker(rx))
            .map_err(ApiError::internal)?;
        *g = Some(tx.clone());
        Ok(tx)
    }

    fn take_client_unit(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.clients.take(ip).map_err(ApiError::rate_limited)
    }
}

/// The client's socket address (not X-Forwarded-For), set per connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Middleware: authenticates the bearer token, applies the rate limits and stores
/// the [`Principal`] in the request extensions.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let header = req.headers().get(AUTHORIZATION).map(|h| {
        h.to_str()
            .ok()
            .filter(|h| h.len() <= MAX_AUTH_HEADER)
            .map(str::to_owned)
    });
    match authorize(&state, ip, header).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// What the cache knows about a presented token.
enum CacheHit {
    /// Verified recently with this very secret.
    Fresh(Principal),
    /// Verified with this secret, but longer ago than [`CACHE_TTL`]: re-read the row.
    Stale,
    /// Not verified with this secret.
    Miss,
}

fn cache_lookup(auth: &AuthState, id: &str, digest: &[u8; 32]) -> Result<CacheHit, ApiError> {
    let cache = auth.cache.lock().map_err(ApiError::internal)?;
    Ok(match cache.get(id) {
        Some(c) if bool::from(c.secret_digest.ct_eq(digest)) => {
            if c.verified_at.elapsed() < CACHE_TTL {
                CacheHit::Fresh(c.principal.clone())
            } else {
                CacheHit::Stale
            }
        }
        _ => CacheHit::Miss,
    })
}

/// `header` is `None` when absent, `Some(None)` when not valid text or too long.
async fn authorize(
    state: &AppState,
    ip: IpAddr,
    header: Option<Option<String>>,
) -> Result<Principal, ApiError> {
    let auth = &state.auth;
    let Some(header) = header else {
        auth.take_client_unit(ip)?;
        return Err(ApiError::unauthenticated(
            "unauthenticated",
            "missing Authorization: Bearer token",
        ));
    };
    let token = header
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let Some((id, secret)) = token.and_then(parse_token) else {
        auth.take_client_unit(ip)?;
        return Err(ApiError::unauthenticated(
            "invalid_token",
            "malformed bearer token",
        ));
    };
    let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let principal = match cache_lookup(auth, id, &digest)? {
        CacheHit::Fresh(p) => Some(p),
        // This secret was verified before: re-reading the row (revocation, rate)
        // costs the client nothing.
        CacheHit::Stale => verify(state, id, secret, digest).await?,
        CacheHit::Miss => {
            // The address pays before any verification runs.
            auth.take_client_unit(ip)?;
            let verified = verify(state, id, secret, digest).await;
            if matches!(verified, Ok(Some(_))) {
                auth.clients.give_back(ip);
            }
            verified?
        }
    };
    let Some(principal) = principal else {
        tracing::warn!(token_id = %id, client = %ip, "rejected invalid or revoked API token");
        return Err(ApiError::unauthenticated(
            "invalid_token",
            "unknown, revoked or wrong token",
        ));
    };
    let limiter = {
        let cache = auth.cache.lock().map_err(ApiError::internal)?;
        cache.get(id).map(|c| c.limiter.clone())
    };
    if let Some(limiter) = limiter {
        take_rate_unit(&limiter, id)?;
    }
    Ok(principal)
}

/// Takes one request from token `id`'s rate limit (429 when it is spent).
fn take_rate_unit(limiter: &DefaultDirectRateLimiter, id: &str) -> Result<(), ApiError> {
    limiter.check().map_err(|not_until| {
        tracing::info!(token_id = %id, "rate limit exceeded");
        ApiError::rate_limited(
            not_until
                .wait_time_from(DefaultClock::default().now())
                .as_secs(),
        )
    })
}

/// Whether `secret` matches the stored hash; `Ok(None)` when the row is keyed but
/// the node is still sealed (no key to check it with).
async fn check_secret(
    auth: &AuthState,
    key: Option<&TokenKey>,
    row: &TokenRow,
    secret: &str,
) -> Result<Option<bool>, ApiError> {
    Ok(match parse_stored(&row.secret_hash) {
        Stored::Keyed(tag) => key.map(|k| k.verify(&row.id, secret, &tag)),
        Stored::Enrol(d) => Some(bool::from(enrol_digest(&row.id, secret).ct_eq(&d))),
        Stored::Argon2 => {
            // Tokens of earlier versions: one argon2 run at a time, node-wide, always
            // on the same thread (so its 19 MiB buffer is reused by one allocator
            // arena instead of being kept by every blocking thread that ran one).
            let _permit = tokio::time::timeout(VERIFY_WAIT, auth.argon2_permits.acquire())
                .await
                .map_err(|_| ApiError::unavailable("too many token verifications; retry"))?
                .map_err(ApiError::internal)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job = Argon2Job {
                hash: row.secret_hash.clone(),
                secret: zeroize::Zeroizing::new(secret.to_owned()),
                reply: tx,
            };
            auth.argon2_worker()?
                .send(job)
                .map_err(|_| ApiError::internal("argon2 worker gone"))?;
            Some(rx.await.map_err(ApiError::internal)?)
        }
        Stored::Unknown => Some(false),
    })
}

async fn verify(
    state: &AppState,
    id: &str,
    secret: &str,
    digest: [u8; 32],
) -> Result<Option<Principal>, ApiError> {
    let auth = &state.auth;
    let _permit = tokio::time::timeout(VERIFY_WAIT, auth.verify_permits.acquire())
        .await
        .map_err(|_| ApiError::unavailable("too many token verifications; retry"))?
        .map_err(ApiError::internal)?;
    let Some(row) = state.node.store.find_token(id).await? else {
        return Ok(None);
    };
    if row.revoked_at.is_some() {
        auth.forget(id);
        return Ok(None);
    }
    let key = auth.token_key();
    match check_secret(auth, key.as_deref(), &row, secret).await? {
        Some(true) => {}
        Some(false) => return Ok(None),
        None => return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "custody_sealed",
            "custody is sealed: API tokens are verified with a key the HSM/TPM holds; see /ready",
        )),
    }
    // Whether the stored form is the keyed one now; a verification of an unkeyed
    // form is not cached until it is rewritten, so a use while custody is still
    // sealed (no key yet) does not keep the unkeyed form for the cache's lifetime:
    // the next use rewrites it (the CI pre-check found the `cluster up` admin
    // token, first used before the node unsealed, still unkeyed later).
    let mut keyed = row.secret_hash.starts_with(KEYED_PREFIX);
    if let Some(key) = key.as_deref() {
        if !keyed {
            let new_hash = key.stored_hash(id, secret);
            match state
                .node
                .store
                .rehash_token(id, &row.secret_hash, &new_hash)
                .await
            {
                Ok(true) => {
                    keyed = true;
                    tracing::info!(token_id = %id, "token hash rewritten to the keyed form")
                }
                // Changed since it was read (another request rewrote it).
                Ok(false) => keyed = true,
                Err(e) => {
                    tracing::warn!(token_id = %id, error = %e, "cannot rewrite the token hash")
                }
            }
        }
    }
    let principal = principal_of(&row)?;
    let limiter = auth.limiter_for(id, u32::try_from(row.rate_limit_per_min).unwrap_or(1));
    if !keyed {
        // Not cached: the caller finds no cached limiter, so the token's rate limit
        // is applied here.
        take_rate_unit(&limiter, id)?;
        return Ok(Some(principal));
    }
    let mut cache = auth.cache.lock().map_err(ApiError::internal)?;
    cache.insert(
        id.to_owned(),
        Cached {
            secret_digest: digest,
            principal: principal.clone(),
            limiter,
            verified_at: Instant::now(),
        },
    );
    Ok(Some(principal))
}

fn principal_of(row: &TokenRow) -> Result<Principal, ApiError> {
    let role = Role::parse(&row.role).ok_or_else(|| {
        ApiError::internal(format!("token {} has unknown role {}", row.id, row.role))
    })?;
    Ok(Principal {
        token_id: row.id.clone(),
        name: row.name.clone(),
        role,
    })
}

/// Keeps the token cache in step with revocations made anywhere (the CLI on this
/// host, this node's API): every `token_revoked` notification (sent by
/// [`crate::store::Store::revoke_token`] in the revoking transaction) drops that
/// token at once. When the listening connection is lost, notifications may have
/// been missed, so the whole cache is dropped and every token is read again from
/// the database at its next use. Runs until the process ends.
pub async fn follow_revocations(auth: Arc<AuthState>, pool: sqlx::PgPool) {
    use crate::store::tokens::TOKEN_REVOKED_CHANNEL;
    loop {
        let listening = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(TOKEN_REVOKED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match listening {
            Ok(mut listener) => {
                // Anything revoked while nobody listened.
                auth.forget_all();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            tracing::info!(token = %n.payload(), "token revoked; dropped from the cache");
                            auth.forget(n.payload());
                        }
                        // Lost and reconnected at the next call: start from nothing.
                        Ok(None) => auth.forget_all(),
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation listener failed; cache dropped");
                            auth.forget_all();
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for token revocations; cache dropped");
                auth.forget_all();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn test_key() -> TokenKey {
        TokenKey::from_bytes(&[7u8; 32]).expect("32 bytes")
    }

    #[test]
    fn generated_token_parses_and_its_enrolment_digest_matches() {
        let t = generate_token().expect("token");
        let (id, secret) = parse_token(t.token.expose_secret()).expect("parses");
        assert_eq!(id, t.id);
        let Stored::Enrol(d) = parse_stored(&t.secret_hash) else {
            panic!("not the enrolment form: {}", t.secret_hash);
        };
        assert_eq!(enrol_digest(id, secret), d);
        assert_ne!(enrol_digest(id, &"0".repeat(64)), d);
        assert!(!t.secret_hash.contains(secret));
    }

    #[test]
    fn keyed_token_hash_verifies_only_with_its_key_id_and_secret() {
        let key = test_key();
        let t = generate_token_with(&key);
        let (id, secret) = parse_token(t.token.expose_secret()).expect("parses");
        assert!(t.secret_hash.starts_with(KEYED_PREFIX), "{}", t.secret_hash);
        assert!(!t.secret_hash.contains(secret));
        let Stored::Keyed(tag) = parse_stored(&t.secret_hash) else {
            panic!("not keyed");
        };
        assert!(key.verify(id, secret, &tag));
        assert!(!key.verify(id, &"0".repeat(64), &tag));
        assert!(!key.verify("aaaaaaaaaaaaaaaa", secret, &tag));
        let other = TokenKey::from_bytes(&[8u8; 32]).expect("32 bytes");
        assert!(!other.verify(id, secret, &tag));
        assert_ne!(key.check_value(), other.check_value());
        assert!(TokenKey::from_bytes(&[0u8; 31]).is_none());
    }

    #[test]
    fn token_key_debug_is_redacted() {
        let dbg = format!("{:?}", test_key());
        assert!(dbg.contains("[REDACTED]"), "{dbg}");
        assert!(!dbg.contains(&hex::encode([7u8; 32])), "{dbg}");
    }

    #[test]
    fn stored_hash_forms_are_recognised() {
        assert!(matches!(
            parse_stored("$argon2id$v=19$m=19456,t=2,p=1$x$y"),
            Stored::Argon2
        ));
        assert!(matches!(parse_stored("hmac-sha256$v1$zz"), Stored::Unknown));
        assert!(matches!(parse_stored("sha256$v1$00"), Stored::Unknown));
        assert!(matches!(parse_stored("plain"), Stored::Unknown));
    }

    #[test]
    fn client_limiter_charges_refunds_and_prunes() {
        let l = ClientLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.take(a).is_ok());
        }
        let wait = l.take(a).expect_err("budget spent");
        assert!((1..=20).contains(&wait), "{wait}");
        // Another address has its own budget.
        assert!(l.take(b).is_ok());
        // A unit given back (valid token) can be used again.
        l.give_back(a);
        assert!(l.take(a).is_ok());
        assert_eq!(l.tracked(), 2);
        // Buckets that have refilled are dropped by pruning.
        let later = Instant::now() + Duration::from_secs(120);
        let mut g = l.lock();
        l.prune(&mut g, later);
        assert!(g.buckets.is_empty());
    }

    #[test]
    fn client_limiter_map_is_bounded() {
        let l = ClientLimiter::new(1);
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 100) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.take(ip);
        }
        assert!(l.tracked() <= MAX_TRACKED_CLIENTS + 1, "{}", l.tracked());
        // Addresses beyond the bound share one (spent) budget.
        let late = IpAddr::V4(std::net::Ipv4Addr::new(11, 0, 0, 1));
        assert!(l.take(late).is_err());
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for bad in [
            "",
            "sgn_",
            "sgn_abc_def",
            "Bearer x",
            &format!("sgn_{}_{}", "A".repeat(16), "0".repeat(64)),
            &format!("sgn_{}_{}", "a".repeat(16), "g".repeat(64)),
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn new_token_debug_is_redacted() {
        let t = generate_token().expect("token");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(t.token.expose_secret()), "{dbg}");
        assert!(dbg.contains("REDACTED"));
    }

    #[test]
    fn admin_passes_every_role_check_and_others_only_their_own() {
        let p = |role| Principal {
            token_id: "x".into(),
            name: "x".into(),
            role,
        };
        assert!(p(Role::Admin).require(&[]).is_ok());
        assert!(p(Role::Operator).require(&[Role::Operator]).is_ok());
        assert!(p(Role::Auditor).require(&[Role::Operator]).is_err());
        assert!(p(Role::Operator).require(&[]).is_err());
    }
}
