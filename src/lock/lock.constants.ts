/** Injection token of the LockBackend the module was configured with. */
export const LOCK_BACKEND = Symbol('LOCK_BACKEND');

/** Metadata key under which @WithLock stores its options. */
export const WITH_LOCK_METADATA = 'lock:with-lock';
