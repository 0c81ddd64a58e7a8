/** Unit tests: pure logic, no services. Types are checked by `npm run typecheck`, so jest only transpiles. */
const transpile = [
  'ts-jest',
  { tsconfig: '<rootDir>/test/tsconfig.jest.json', diagnostics: false },
];

module.exports = {
  rootDir: '..',
  testEnvironment: 'node',
  roots: ['<rootDir>/src', '<rootDir>/test/unit'],
  testRegex: '\\.spec\\.ts$',
  transform: {
    '^.+\\.ts$': transpile,
    // ESM-only dependencies (of @fastify/static, which serves the Swagger UI): Node 20 can
    // require() them, Jest's module system cannot, so they are transpiled to CommonJS.
    '/node_modules/content-disposition/.+\\.js$': transpile,
  },
  transformIgnorePatterns: ['/node_modules/(?!content-disposition/)'],
};
