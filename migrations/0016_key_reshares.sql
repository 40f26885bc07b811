-- Key lifecycle (docs/RESHARING.md, issue 18): a reshare or refresh of an existing
-- key. The run is recorded as a key ceremony (dkg_ceremonies, same protocol as the
-- key, id = session id) whose new share is stored in key_shares with usable = false
-- (PENDING) next to the still-usable old share. This table holds what the switch
-- needs: the approving votes, the confirmation value, and the state. Only when every
-- participant confirmed the same value does the node, in one transaction, make the
-- new share usable, delete the key's older shares and presignatures, and mark the
-- row committed. A pending row found at start (the node died midway) is failed and
-- its pending share deleted: the old share stays the key's share.
CREATE TABLE key_reshares (
    id              UUID PRIMARY KEY REFERENCES dkg_ceremonies (id) ON DELETE RESTRICT,
    key_id          TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    old_ceremony_id UUID NOT NULL,
    old_threshold   INTEGER NOT NULL CHECK (old_threshold >= 1),
    old_participants TEXT[] NOT NULL,
    new_threshold   INTEGER NOT NULL CHECK (new_threshold >= 1),
    new_participants TEXT[] NOT NULL,
    dealers         TEXT[] NOT NULL,
    coordinator     TEXT NOT NULL,
    -- SHA-256 of the voted proposal (the subject of every vote).
    proposal_digest BYTEA NOT NULL CHECK (length(proposal_digest) = 32),
    -- The approving signed votes (vote crate encoding), hex, by voter.
    votes           JSONB NOT NULL,
    confirmation    BYTEA CHECK (confirmation IS NULL OR length(confirmation) = 32),
    -- 'uncertain': the reshare ended here without a switch AFTER this node stored
    -- (and so may have sent) its confirmation: other nodes may have switched, so
    -- the pending share is kept (never deleted on this node's own decision) next
    -- to the still-usable old one. A later successful reshare of the key deletes
    -- it and marks this row failed (superseded). docs/RESHARING.md, "Known gap".
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'committed', 'failed', 'uncertain')),
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);
CREATE INDEX idx_key_reshares_key ON key_reshares (key_id);
