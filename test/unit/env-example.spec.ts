import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'dotenv';
import { envSchema, validateEnv } from '../../src/config/env.schema';

describe('.env.example', () => {
  const text = readFileSync(join(__dirname, '../../.env.example'), 'utf8');
  const values = parse(text);

  it('documents every variable the service reads', () => {
    const documented = Object.keys(values);
    const missing = Object.keys(envSchema.shape).filter((name) => !documented.includes(name));
    expect(missing).toEqual([]);
    const unknown = documented.filter((name) => !(name in envSchema.shape));
    expect(unknown).toEqual([]);
  });

  it('is a valid configuration as it stands', () => {
    expect(() => validateEnv(values)).not.toThrow();
  });
});
