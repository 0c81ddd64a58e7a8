/** e2e and integration tests: the real app against real Postgres + pgvector and Redis. */
module.exports = {
  ...require('./jest-unit.config.js'),
  roots: ['<rootDir>/test'],
  testRegex: '\\.e2e-spec\\.ts$',
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  testTimeout: 30000,
  maxWorkers: 2,
};
