import { defineConfig } from 'vitest/config';

// Two projects: fast unit tests of the pure stages, and integration tests against a real Samba
// AD DC (started once by test/global-setup.ts; needs root and Debian's samba packages, which
// `npm test`'s pretest step installs when missing).
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts', 'test/contract/**/*.test.ts'],
          globalSetup: ['test/global-setup.ts'],
          // One file at a time: the files share one DC, and some stop it or lock accounts in it.
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          // `npm run test:slow` only: long-polls at their full protocol duration (about an hour).
          name: 'slow',
          include: ['test/slow/**/*.test.ts'],
          testTimeout: 70 * 60_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
