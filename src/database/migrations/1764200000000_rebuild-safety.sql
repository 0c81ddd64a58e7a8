-- Up Migration
-- Slot numbers are never reused within a namespace: a rebuild that lost its lock must not be
-- able to mistake a later rebuild's slot for its own (see RebuildService).
ALTER TABLE vector_namespaces ADD COLUMN IF NOT EXISTS last_slot integer NOT NULL DEFAULT 0;
UPDATE vector_namespaces n
SET last_slot = GREATEST(
  n.active_slot,
  COALESCE(n.building_slot, 0),
  COALESCE((SELECT max(s.slot) FROM vector_slots s WHERE s.namespace = n.namespace), 0)
);

-- Activation epoch: bumped whenever the active slot changes (switch or rollback). Upserts stamp
-- their rows with the epoch they wrote under, read in the same transaction as the active slot,
-- so a rollback carries over exactly the rows written since the current activation, whatever
-- the clocks said.
ALTER TABLE vector_namespaces ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 1;

-- A rebuild records the slot it builds (by id) and the fence of the lock it holds; it holds a
-- session advisory lock on that slot id while it lives, so a crashed one shows as abandoned.
ALTER TABLE vector_rebuilds ADD COLUMN IF NOT EXISTS slot_id bigint;
ALTER TABLE vector_rebuilds ADD COLUMN IF NOT EXISTS fence bigint;
ALTER TABLE vector_rebuilds DROP CONSTRAINT IF EXISTS vector_rebuilds_status_check;
ALTER TABLE vector_rebuilds ADD CONSTRAINT vector_rebuilds_status_check
  CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned'));

-- Down Migration
ALTER TABLE vector_rebuilds DROP CONSTRAINT IF EXISTS vector_rebuilds_status_check;
UPDATE vector_rebuilds SET status = 'failed' WHERE status = 'abandoned';
ALTER TABLE vector_rebuilds ADD CONSTRAINT vector_rebuilds_status_check
  CHECK (status IN ('running', 'succeeded', 'failed'));
ALTER TABLE vector_rebuilds DROP COLUMN IF EXISTS fence;
ALTER TABLE vector_rebuilds DROP COLUMN IF EXISTS slot_id;
ALTER TABLE vector_namespaces DROP COLUMN IF EXISTS epoch;
ALTER TABLE vector_namespaces DROP COLUMN IF EXISTS last_slot;
