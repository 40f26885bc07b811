//! PostgreSQL persistence: one database per node, migrations applied at start.
//!
//! Queries are built at run time with bound parameters only (never string
//! concatenation of input), so no database is needed to compile.

pub mod approvals;
pub mod audit;
pub mod batch_writes;
pub mod dkg;
mod groups;
pub mod node_keys;
pub mod presignatures;
pub mod primes;
pub mod reshare;
pub mod rotation;
pub mod tokens;
pub mod transactions;
pub mod utxos;
pub mod violations;
pub mod vote_inserts;
pub mod votes;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database rejected or failed a query.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that must exist does not.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of row.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A unique constraint refused a second row (e.g. a second vote by a node).
    #[error("duplicate {what}: {detail}")]
    Duplicate {
        /// Kind of row.
        what: &'static str,
        /// Which constraint or values.
        detail: String,
    },
    /// A state change the schema does not allow.
    #[error("invalid state transition: {0}")]
    InvalidTransition(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Maps unique-violation and check-violation errors to typed variants.
    /// Whether the database could not be reached or is restarting (connection
    /// refused or lost, pool exhausted or closed, server shutting down or starting):
    /// the request may succeed later and nothing was changed by it.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                // Class 08: connection exception; 57P01..57P03: admin shutdown,
                // crash shutdown, cannot connect now.
                c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }

    /// Whether PostgreSQL rolled the transaction back to break a conflict with a
    /// concurrent one (`40P01` deadlock detected, `40001` serialization failure):
    /// nothing of it was written, and running it again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Db(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("40P01" | "40001"))
        )
    }

    pub(crate) fn classify(err: sqlx::Error, what: &'static str) -> StoreError {
        if let sqlx::Error::Database(db) = &err {
            match db.code().as_deref() {
                Some("23505") => {
                    return StoreError::Duplicate {
                        what,
                        detail: db.constraint().unwrap_or("unique").to_owned(),
                    }
                }
                Some("23514") if db.message().contains("state transition") => {
                    return StoreError::InvalidTransition(db.message().to_owned())
                }
                _ => {}
            }
        }
        StoreError::Db(err)
    }
}

/// Times a database transaction that PostgreSQL rolled back for a conflict
/// ([`StoreError::is_conflict`]) is run, at most.
pub const CONFLICT_ATTEMPTS: u32 = 3;

/// Runs `once` (one whole database transaction) again when PostgreSQL rolled it
/// back for a conflict with a concurrent one: a deadlock between independent
/// writers (e.g. a signing entry and a group of round closes under load) must not
/// fail a payment. Nothing of a rolled-back attempt was written.
pub(crate) async fn retry_conflicts<T, F, Fut>(
    what: &'static str,
    mut once: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match once().await {
            Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                tracing::warn!(what, attempt, error = %e, "database conflict; running the transaction again");
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// The node's database handle.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// The pinned vote keys as last read (issue 21: the profile showed the book
    /// read once per vote); see [`Store::vote_keys`].
    vote_keys: std::sync::Arc<std::sync::Mutex<votes::VoteKeyCache>>,
    vote_inserts: std::sync::Arc<vote_inserts::VoteInserts>,
    signed_records: std::sync::Arc<transactions::SignedRecords>,
    submissions: std::sync::Arc<transactions::Submissions>,
    session_entries: std::sync::Arc<transactions::SessionEntries>,
    round_closes: std::sync::Arc<votes::RoundCloses>,
    /// Counts the commits that may have made reserved outputs available again
    /// (see [`Store::releases`]).
    releases: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The embedded schema migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

impl Store {
    /// Connects with a pool of `max_connections` and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = Store::connect_unmigrated(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without applying migrations (restoring a backup into an empty
    /// database).
    pub async fn connect_unmigrated(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let opts: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Store {
            pool,
            vote_keys: Default::default(),
            vote_inserts: std::sync::Arc::new(vote_inserts::vote_inserts()),
            signed_records: std::sync::Arc::new(transactions::signed_records()),
            submissions: std::sync::Arc::new(transactions::submissions()),
            session_entries: std::sync::Arc::new(transactions::session_entries()),
            round_closes: std::sync::Arc::new(votes::round_closes()),
            releases: Default::default(),
        })
    }

    /// Applies pending migrations; running it again is a no-op.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How many commits through this store may have made reserved outputs
    /// available again (a round closed other than approved, a transaction failed
    /// or expired, a release), counted after each such commit: a reader that takes
    /// the count before its read of the selectable outputs and finds it unchanged
    /// later knows that no release committed after the read (the leader's coin
    /// selection view, `tx::selection`).
    pub fn releases(&self) -> u64 {
        self.releases.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a commit that may have released outputs (see [`Store::releases`]).
    pub(crate) fn released(&self) {
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
