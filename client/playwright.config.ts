import { defineConfig } from "@playwright/test";

/**
 * `npm run e2e`: the page in Debian's chromium against a running system, configured by the
 * environment alone (the wrapper, tests/e2e/test_admin_page.py, sets all of it):
 *   BACKUP_E2E_BASE_URL      the gateway serving the page and the API, e.g. http://127.0.0.1:8080
 *   BACKUP_E2E_TOKEN         an admin JWT
 *   BACKUP_E2E_VIEWER_TOKEN  a valid JWT without the admin role
 *   BACKUP_E2E_SCREENSHOTS   the directory backup-list.png and restore-dialog.png are written to
 *   CHROMIUM_PATH            the browser (default /usr/bin/chromium); Playwright downloads none
 *   BACKUP_E2E_RESTORE_DIR   optional: BACKUP_RESTORE_DIR of the system, for the restore it submits
 *                            (otherwise the spec learns it from the gateway's answer to a bad target)
 */
const REQUIRED = ["BACKUP_E2E_BASE_URL", "BACKUP_E2E_TOKEN", "BACKUP_E2E_VIEWER_TOKEN", "BACKUP_E2E_SCREENSHOTS"];
const missing = REQUIRED.filter((name) => !process.env[name]);
if (missing.length > 0) {
  console.error(
    `npm run e2e needs a running system and these variables, which are not set: ${missing.join(", ")}.\n` +
      "It is run by `make test` (tests/e2e/test_admin_page.py), which starts the system and sets them.",
  );
  process.exit(2);
}

// Without the background-networking flags chromium keeps trying to reach Google's services, which
// a closed network answers with a flood of failures.
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export default defineConfig({
  testDir: "e2e",
  workers: 1,
  retries: 0,
  fullyParallel: false,
  forbidOnly: true,
  // Backups, restores and verifications take seconds each; several happen in one test.
  timeout: 5 * 60_000,
  expect: { timeout: 15_000 },
  reporter: [["list"]],
  outputDir: "test-results",
  use: {
    baseURL: process.env.BACKUP_E2E_BASE_URL,
    headless: true,
    viewport: { width: 1280, height: 900 },
    locale: "en-GB",
    timezoneId: "UTC",
    screenshot: "only-on-failure",
    trace: "off",
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
      args: CHROMIUM_FLAGS,
    },
  },
});
