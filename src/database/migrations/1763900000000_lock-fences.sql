-- Up Migration
-- Highest fencing token seen per lock key (see src/lock/postgres-fencing.ts).
CREATE TABLE IF NOT EXISTS lock_fences (
  lock_key   text PRIMARY KEY,
  fence      bigint NOT NULL CHECK (fence > 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE IF EXISTS lock_fences;
