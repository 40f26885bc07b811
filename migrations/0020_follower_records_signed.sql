-- A node that did not sign a transaction records the leader's verified result
-- straight from `approved` (issue 21): before, it moved the row to `signing` in a
-- statement of its own first, although it never signed anything (one more write
-- of the row per payment on every such node). Signers still pass through
-- `signing`, which is what keeps their inputs reserved at a restart (a partial may
-- have left); a node that never signed has no partial out.
INSERT INTO transaction_transitions (from_state, to_state) VALUES ('approved', 'signed');
