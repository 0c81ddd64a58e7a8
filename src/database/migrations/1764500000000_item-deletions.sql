-- Up Migration
-- Deletions a slot must still learn of (see VectorService.delete):
-- * for a building slot: keys deleted while its rebuild copied, so the switch removes rows the
--   copy brought back from a snapshot read before the delete;
-- * for the active slot, while a previous slot is kept: keys deleted since the activation
--   (`epoch`), so a rollback removes them from the previous slot instead of resurrecting them.
-- Rows go when their slot is switched to, rolled back from, or dropped.
CREATE TABLE IF NOT EXISTS vector_deletions (
  slot_id    bigint      NOT NULL,
  table_name text        NOT NULL,
  obj_ref    text        NOT NULL,
  epoch      bigint      NOT NULL,
  deleted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (slot_id, table_name, obj_ref)
);

-- Down Migration
DROP TABLE IF EXISTS vector_deletions;
