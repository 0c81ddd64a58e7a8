-- Up Migration
-- Namespaces and their slots. Item tables (one parent per registered table, one partition per
-- slot) are created by the service from its configured table list: see VectorSchemaRepository.
CREATE TABLE IF NOT EXISTS vector_namespaces (
  namespace     text PRIMARY KEY CHECK (namespace ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
  active_slot   integer NOT NULL,
  building_slot integer,
  previous_slot integer,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS vector_slots (
  id           bigserial PRIMARY KEY,
  namespace    text NOT NULL REFERENCES vector_namespaces (namespace) ON DELETE CASCADE,
  slot         integer NOT NULL CHECK (slot > 0),
  model        text NOT NULL,
  dimension    integer NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
  status       text NOT NULL CHECK (status IN ('building', 'active', 'retired')),
  created_at   timestamptz NOT NULL DEFAULT now(),
  activated_at timestamptz,
  retired_at   timestamptz,
  UNIQUE (namespace, slot)
);

-- Progress of rebuilds, readable from any replica.
CREATE TABLE IF NOT EXISTS vector_rebuilds (
  id           bigserial PRIMARY KEY,
  namespace    text NOT NULL,
  slot         integer NOT NULL,
  status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
  phase        text NOT NULL,
  processed    bigint NOT NULL DEFAULT 0,
  total        bigint NOT NULL DEFAULT 0,
  embedded     bigint NOT NULL DEFAULT 0,
  reused       bigint NOT NULL DEFAULT 0,
  error        text,
  started_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS vector_rebuilds_namespace_idx ON vector_rebuilds (namespace, id DESC);

-- Down Migration
DROP TABLE IF EXISTS vector_rebuilds;
DROP TABLE IF EXISTS vector_slots;
DROP TABLE IF EXISTS vector_namespaces;
