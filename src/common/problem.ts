import { STATUS_CODES } from 'node:http';

/** One field-level validation failure, as listed in a problem's `errors`. */
export interface FieldError {
  /** Path of the offending field, e.g. `items[3].obj_ref`; empty for the whole body. */
  field: string;
  message: string;
}

/** RFC 9457 problem details, as sent with `Content-Type: application/problem+json`. */
export interface ProblemDetails {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  errors?: FieldError[];
  [extension: string]: unknown;
}

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export function problem(
  status: number,
  detail?: string,
  extra: Partial<ProblemDetails> = {},
): ProblemDetails {
  return {
    type: 'about:blank',
    title: STATUS_CODES[status] ?? 'Error',
    status,
    ...(detail === undefined ? {} : { detail }),
    ...extra,
  };
}
