import { defineConfig } from 'vitest/config';

// Projects: fast unit tests of the pure stages; integration tests against a real Samba AD DC (started
// once by test/global-setup.ts; needs root and Debian's samba packages); browser tests in Debian's
// Chromium (test/helpers/browser.ts). `npm test`'s pretest step installs Samba and Chromium when missing.
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
          name: 'browser',
          include: ['test/browser/**/*.test.ts'],
          // One browser at a time: each is a few hundred MB and the CI machine has two cores.
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 60_000,
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
