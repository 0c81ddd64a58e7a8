-- Up Migration
-- Streaming NDJSON imports (POST /api/v1/vector/import) and their progress, readable from any
-- replica. An import holds a session advisory lock on (IMPORT_SESSION_LOCK, lock_key) on its own
-- connection while it runs, so a row still marked running whose lock is gone reads as
-- abandoned (its process or connection died); its staging table is then dropped. See
-- ImportService.
CREATE TABLE IF NOT EXISTS vector_imports (
  id          uuid PRIMARY KEY,
  lock_key    serial NOT NULL UNIQUE,
  namespace   text NOT NULL,
  table_name  text NOT NULL,
  status      text NOT NULL CHECK (status IN ('receiving', 'loading', 'indexing', 'switching',
                                              'succeeded', 'failed', 'abandoned')),
  -- 'merge' (into the active slot) or 'slot' (a new slot, indexed once, switched to).
  mode        text CHECK (mode IN ('merge', 'slot')),
  lines       bigint NOT NULL DEFAULT 0,
  rows        bigint NOT NULL DEFAULT 0,
  embedded    bigint NOT NULL DEFAULT 0,
  slot        integer,
  error       text,
  -- Set once its staging table is gone; until then a sweep drops it when the import's session
  -- lock is gone.
  staging_dropped boolean NOT NULL DEFAULT false,
  started_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS vector_imports_namespace_idx
  ON vector_imports (namespace, started_at DESC);

-- Down Migration
DROP TABLE IF EXISTS vector_imports;
