/* Response bodies of the lock endpoints, for the OpenAPI document. */

export class LockHolderDto {
  instance_id!: string;
  pid!: number;
  operation!: string | null;
  acquired_at!: string;
}

export class LockStatusDto {
  lock_key!: string;
  locked!: boolean;
  /** Remaining lease in ms, from Redis; null when free. */
  ttl_ms!: number | null;
  holder!: LockHolderDto | null;
  /** Last fencing token handed out for this key. */
  fencing_token!: number;
}

export class ForceReleaseDto {
  success!: boolean;
  released!: boolean;
  lock_key!: string;
  previous_holder!: LockHolderDto | null;
  /** The fence after the bump: writes fenced below it are refused. */
  fencing_token!: number;
}
