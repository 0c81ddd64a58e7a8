import { SetMetadata } from '@nestjs/common';
import { Scope } from './api-keys';

export const REQUIRED_SCOPE = 'auth:scope';

/** The scope a route needs (routes without it need `read`). */
export const RequireScope = (scope: Scope | 'public') => SetMetadata(REQUIRED_SCOPE, scope);

/** Open to anyone: probes. */
export const Public = () => RequireScope('public');
