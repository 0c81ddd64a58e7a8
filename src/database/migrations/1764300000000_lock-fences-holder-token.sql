-- Up Migration
-- The owner token of the holder that recorded the fence: an equal fence is valid only for that
-- holder (see src/lock/postgres-fencing.ts). NULL when no holder may write with it (a fence
-- raised by a force-release).
ALTER TABLE lock_fences ADD COLUMN IF NOT EXISTS holder_token text;

-- Down Migration
ALTER TABLE lock_fences DROP COLUMN IF EXISTS holder_token;
