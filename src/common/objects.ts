/** The entries of `object` whose value is not undefined (so spreads keep earlier defaults). */
export function definedOnly<T extends object>(object: T): Partial<T> {
  return Object.fromEntries(
    Object.entries(object).filter(([, value]) => value !== undefined),
  ) as Partial<T>;
}
