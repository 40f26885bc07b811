//! Bearer tokens with roles, and per-token rate limiting.
//!
//! A token reads `sgn_<id>_<secret>`: `id` is public (16 lower-case alphanumerics),
//! `secret` is 32 random bytes in hex. Only an argon2id hash of the secret is stored.
//! A successful verification is cached for a short time as a SHA-256 of the secret,
//! so argon2 runs once per token per cache period, not per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::store::tokens::TokenRow;

/// Maximum length of an Authorization header we look at.
const MAX_AUTH_HEADER: usize = 256;
/// How long a verified token stays cached.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// Token roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// A freshly generated token; the full string is shown once and never stored.
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// The full bearer token.
    pub token: SecretString,
    /// argon2 PHC hash of the secret, for storage.
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

/// Generates a token and its stored hash.
pub fn generate_token() -> Result<NewToken, ApiError> {
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
    let secret_hex = zeroize::Zeroizing::new(hex::encode(secret.as_slice()));
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let secret_hash = Argon2::default()
        .hash_password(secret_hex.as_bytes(), &salt)
        .map_err(ApiError::internal)?
        .to_string();
    Ok(NewToken {
        token: SecretString::from(format!("sgn_{id}_{}", secret_hex.as_str())),
        id,
        secret_hash,
    })
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

/// Token cache and rate limiters.
pub struct AuthState {
    cache: Mutex<HashMap<String, Cached>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    unauthenticated: DefaultKeyedRateLimiter<IpAddr>,
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
            unauthenticated: RateLimiter::keyed(per_minute(unauth_per_min)),
        }
    }

    /// Forgets a token (after revocation).
    pub fn forget(&self, token_id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(token_id);
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

    fn check_unauthenticated(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.unauthenticated.check_key(&ip).map_err(|not_until| {
            ApiError::rate_limited(
                not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs(),
            )
        })
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

/// `header` is `None` when absent, `Some(None)` when not valid text or too long.
async fn authorize(
    state: &AppState,
    ip: IpAddr,
    header: Option<Option<String>>,
) -> Result<Principal, ApiError> {
    let auth = &state.auth;
    let fail = |e: ApiError| -> ApiError {
        match auth.check_unauthenticated(ip) {
            Ok(()) => e,
            Err(limited) => limited,
        }
    };
    let Some(header) = header else {
        return Err(fail(ApiError::unauthenticated(
            "unauthenticated",
            "missing Authorization: Bearer token",
        )));
    };
    let token = header
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let Some((id, secret)) = token.and_then(parse_token) else {
        return Err(fail(ApiError::unauthenticated(
            "invalid_token",
            "malformed bearer token",
        )));
    };
    let principal = match verify(state, id, secret).await? {
        Some(p) => p,
        None => {
            tracing::warn!(token_id = %id, client = %ip, "rejected invalid or revoked API token");
            return Err(fail(ApiError::unauthenticated(
                "invalid_token",
                "unknown, revoked or wrong token",
            )));
        }
    };
    let limiter = {
        let cache = auth.cache.lock().map_err(ApiError::internal)?;
        cache.get(id).map(|c| c.limiter.clone())
    };
    if let Some(limiter) = limiter {
        if let Err(not_until) = limiter.check() {
            tracing::info!(token_id = %id, "rate limit exceeded");
            return Err(ApiError::rate_limited(
                not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs(),
            ));
        }
    }
    Ok(principal)
}

async fn verify(state: &AppState, id: &str, secret: &str) -> Result<Option<Principal>, ApiError> {
    let auth = &state.auth;
    let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    {
        let cache = auth.cache.lock().map_err(ApiError::internal)?;
        if let Some(c) = cache.get(id) {
            if c.verified_at.elapsed() < CACHE_TTL {
                return Ok((c.secret_digest == digest).then(|| c.principal.clone()));
            }
        }
    }
    let Some(row) = state.node.store.find_token(id).await? else {
        return Ok(None);
    };
    if row.revoked_at.is_some() {
        auth.forget(id);
        return Ok(None);
    }
    let secret_owned = zeroize::Zeroizing::new(secret.to_owned());
    let hash = row.secret_hash.clone();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(secret_owned.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(ApiError::internal)?;
    if !ok {
        return Ok(None);
    }
    let principal = principal_of(&row)?;
    let limiter = auth.limiter_for(id, u32::try_from(row.rate_limit_per_min).unwrap_or(1));
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_token_parses_and_hash_verifies() {
        let t = generate_token().expect("token");
        let (id, secret) = parse_token(t.token.expose_secret()).expect("parses");
        assert_eq!(id, t.id);
        let h = PasswordHash::new(&t.secret_hash).expect("phc");
        assert!(Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &h).is_err());
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
