-- Up Migration
-- While a rebuild builds its new slot's index (a plain, non-concurrent build: it blocks writes
-- to that table), upserts write their copy for the new slot to a side table, merged into it at
-- the switch. See RebuildService and VectorService.write.
ALTER TABLE vector_namespaces ADD COLUMN IF NOT EXISTS building_indexing boolean NOT NULL DEFAULT false;

-- Down Migration
ALTER TABLE vector_namespaces DROP COLUMN IF EXISTS building_indexing;
