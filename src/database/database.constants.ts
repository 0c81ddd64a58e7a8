/** Injection token of the application's single `pg` Pool. */
export const PG_POOL = Symbol('PG_POOL');
