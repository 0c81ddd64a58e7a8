import { supportsParallelHnswBuild } from '../../src/health/indicators';

describe('supportsParallelHnswBuild', () => {
  it.each([
    ['0.7.4', false],
    ['0.8.0', false],
    ['0.8.1', false],
    ['0.8.2', true],
    ['0.8.10', true],
    ['0.9.0', true],
    ['1.0', true],
  ])('%s → %s', (version, expected) => {
    expect(supportsParallelHnswBuild(version)).toBe(expected);
  });
});
