//! `prime_pool`: this node's sealed, pregenerated safe-prime sets.

use uuid::Uuid;

use super::{Store, StoreError};
use crate::audit::AuditEntry;

/// Counts of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolCounts {
    /// Sets ready to be taken.
    pub available: i64,
    /// Sets taken by aux-info ceremonies so far.
    pub taken: i64,
    /// Sets this node generated itself (all time).
    pub generated: i64,
    /// Available sets that are published test fixtures.
    pub test_fixtures_available: i64,
}

/// A set taken from the pool (still sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TakenPrimes {
    /// Pool entry id (the envelope's key id).
    pub id: Uuid,
    /// Sealed prime set.
    pub envelope: Vec<u8>,
    /// `generated` or `test_fixture`.
    pub source: String,
}

impl Store {
    /// Adds a sealed prime set to the pool. For test fixtures, `fixture_hash` makes the
    /// import idempotent: returns false if that fixture was imported before.
    pub async fn add_prime_set(
        &self,
        node_id: &str,
        id: Uuid,
        envelope: &[u8],
        source: &str,
        fixture_hash: Option<&[u8]>,
        generation_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let added = sqlx::query(
            "INSERT INTO prime_pool (id, node_id, envelope, source, fixture_hash, generation_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fixture_hash) DO NOTHING",
        )
        .bind(id)
        .bind(node_id)
        .bind(envelope)
        .bind(source)
        .bind(fixture_hash)
        .bind(generation_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::classify(e, "prime set"))?
        .rows_affected()
            == 1;
        if added {
            super::audit::append_audit(
                &mut tx,
                node_id,
                AuditEntry::new("node", "primes.added")
                    .subject(id.to_string())
                    .details(
                        serde_json::json!({ "source": source, "generation_ms": generation_ms }),
                    ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Takes the oldest available set for `ceremony`, in one transaction: the row is
    /// marked taken before the set is ever opened, so it cannot be handed out twice.
    /// Published test fixtures are taken only when `allow_fixtures` (regtest).
    pub async fn take_prime_set(
        &self,
        node_id: &str,
        ceremony: Uuid,
        allow_fixtures: bool,
    ) -> Result<Option<TakenPrimes>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query_as::<_, TakenPrimes>(
            "UPDATE prime_pool SET state = 'taken', taken_by = $2, taken_at = now() \
             WHERE id = (SELECT id FROM prime_pool WHERE node_id = $1 AND state = 'available' \
                         AND (source <> 'test_fixture' OR $3) \
                         ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, envelope, source",
        )
        .bind(node_id)
        .bind(ceremony)
        .bind(allow_fixtures)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = &row {
            super::audit::append_audit(
                &mut tx,
                node_id,
                AuditEntry::new("node", "primes.taken")
                    .subject(r.id.to_string())
                    .details(serde_json::json!({ "ceremony": ceremony, "source": r.source })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Pool counts of this node.
    pub async fn prime_pool_counts(&self, node_id: &str) -> Result<PoolCounts, StoreError> {
        let (available, taken, generated, fixtures): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'available'), \
                    count(*) FILTER (WHERE state = 'taken'), \
                    count(*) FILTER (WHERE source = 'generated'), \
                    count(*) FILTER (WHERE state = 'available' AND source = 'test_fixture') \
             FROM prime_pool WHERE node_id = $1",
        )
        .bind(node_id)
        .fetch_one(self.pool())
        .await?;
        Ok(PoolCounts {
            available,
            taken,
            generated,
            test_fixtures_available: fixtures,
        })
    }
}
