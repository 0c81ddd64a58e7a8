-- Up Migration
-- pgvector is not a trusted extension: creating it needs a superuser, which scripts/services.sh
-- (or the pgvector image's entrypoint) provides. When it already exists this is a no-op that
-- needs no privilege, so the service itself can run as an ordinary role.
CREATE EXTENSION IF NOT EXISTS vector;

-- Down Migration
-- Dropping the extension would drop every vector column with it; leave it in place.
SELECT 1;
