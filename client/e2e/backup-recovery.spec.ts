/**
 * The Backup & Recovery page in real Chromium against a running system (see playwright.config.ts).
 *
 * The system holds two completed backups made through the API beforehand ("seeded database backup",
 * "seeded files backup"). One page is used throughout, in order, as an administrator would: sign in,
 * look, create, restore, schedule. What the spec adds it removes (the schedule entry); the backup it
 * creates and the directory it restores into stay, as any administrator's would.
 */

import path from "node:path";

import { expect, test, type ConsoleMessage, type Locator, type Page } from "@playwright/test";

const BASE_URL = process.env.BACKUP_E2E_BASE_URL ?? "";
const ADMIN_TOKEN = process.env.BACKUP_E2E_TOKEN ?? "";
const VIEWER_TOKEN = process.env.BACKUP_E2E_VIEWER_TOKEN ?? "";
const SCREENSHOTS = process.env.BACKUP_E2E_SCREENSHOTS ?? "";
const PAGE_PATH = "/admin/backup-recovery";
const API = `${BASE_URL}/api/admin/backup`;

/** A mark of this run, so that what it creates is told apart from anything else. */
const RUN = Date.now().toString(36);
const BACKUP_DESCRIPTION = `e2e page backup ${RUN}`;
const SCHEDULE_NAME = `e2e-${RUN}`;
const BACKUP_SECONDS = 180;

test.describe.configure({ mode: "serial" });

let page: Page;
/** Everything the browser reported as an error: console errors and uncaught exceptions. */
const problems: string[] = [];
/** Console errors a step provokes on purpose (the viewer's 403), recognised by text and URL. */
let expectedConsoleErrors: Array<{ text: RegExp; url: RegExp }> = [];

function onConsole(message: ConsoleMessage) {
  if (message.type() !== "error") return;
  const { url } = message.location();
  if (expectedConsoleErrors.some((expected) => expected.text.test(message.text()) && expected.url.test(url))) return;
  problems.push(`console error: ${message.text()}${url ? ` (${url})` : ""}`);
}

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  page.on("console", onConsole);
  page.on("pageerror", (error) => problems.push(`uncaught exception: ${error.message}`));
});

test.afterAll(async ({ request }) => {
  await page?.close();
  // Leave the schedule as it was found, even when the step that removes the entry failed half-way.
  const headers = { Authorization: `Bearer ${ADMIN_TOKEN}` };
  const read = await request.get(`${API}/schedule`, { headers });
  if (!read.ok()) return;
  const stored = (await read.json()) as { revision: number; document: { schedules: Array<{ name: string }> } };
  const schedules = stored.document.schedules.filter((entry) => entry.name !== SCHEDULE_NAME);
  if (schedules.length === stored.document.schedules.length) return;
  await request.put(`${API}/schedule`, {
    headers: { ...headers, "If-Match": `"${stored.revision}"` },
    data: { ...stored.document, schedules },
  });
});

test.afterEach(() => {
  // Each step leaves the console clean, so a failure names the step that broke it.
  expect(problems, "the browser reported errors").toEqual([]);
});

function backupsTable(): Locator {
  return page.getByRole("table", { name: "Backups" });
}

function backupRow(description: string): Locator {
  return backupsTable().getByRole("row").filter({ hasText: description });
}

test("shows the sign-in to a visitor without a token", async () => {
  const response = await page.goto(PAGE_PATH);
  expect(response?.status()).toBe(200);
  await expect(page.getByRole("heading", { name: "Backup & Recovery", level: 1 })).toBeVisible();
  await expect(page.getByLabel("Admin token")).toBeVisible();
  await expect(page.getByRole("button", { name: "Sign in" })).toBeVisible();
  await expect(
    page.getByRole("navigation", { name: "Admin" }).getByRole("link", { name: "Backup & Recovery" }),
  ).toHaveAttribute("aria-current", "page");
});

test("tells a signed-in user without the admin role that the account is not an administrator", async () => {
  // The browser itself logs the refused request (403) as a console error: expected here, and only here.
  expectedConsoleErrors = [{ text: /status of 403/, url: /\/api\/admin\/backup\// }];
  try {
    await page.getByLabel("Admin token").fill(VIEWER_TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect(page.getByText(/This account is not an administrator/)).toBeVisible();
    await expect(page.getByRole("heading", { name: "Backups", exact: true })).toHaveCount(0);
  } finally {
    expectedConsoleErrors = [];
  }
});

test("signs the administrator in and lists the backups made through the API", async () => {
  await page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.getByRole("heading", { name: "Backups", exact: true })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Statistics", exact: true })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Schedule", exact: true })).toBeVisible();

  for (const [type, description] of [
    ["Database", "seeded database backup"],
    ["Files", "seeded files backup"],
  ] as const) {
    const row = backupRow(description);
    await expect(row).toHaveCount(1);
    await expect(row.getByRole("cell", { name: type, exact: true })).toBeVisible();
    await expect(row.getByText("completed", { exact: true })).toBeVisible();
    await expect(row.getByRole("button", { name: "Restore", exact: true })).toBeEnabled();
  }
  // The statistics count them too.
  await expect(page.getByRole("table", { name: "By type" }).getByRole("row", { name: /^Database/ })).not.toContainText(
    "never",
  );

  await page.getByRole("region", { name: "Backups" }).screenshot({ path: path.join(SCREENSHOTS, "backup-list.png") });
});

test("creates a database backup from the page and watches its row reach completed without a reload", async () => {
  // A reload would lose this mark: the row must get there by itself.
  await page.evaluate(() => Object.assign(window, { __e2eNoReload: true }));

  await page.getByRole("button", { name: "Create backup" }).click();
  const form = page.getByRole("form", { name: "Create backup" });
  await form.getByLabel("Type").selectOption("database");
  await form.getByLabel("Description").fill(BACKUP_DESCRIPTION);
  await form.getByRole("button", { name: "Start backup" }).click();

  const row = backupRow(BACKUP_DESCRIPTION);
  await expect(row).toHaveCount(1, { timeout: 5_000 });
  await expect(row.getByText("completed", { exact: true })).toBeVisible({ timeout: BACKUP_SECONDS * 1000 });
  await expect(row.getByText("failed", { exact: true })).toHaveCount(0);
  expect(await page.evaluate(() => (window as unknown as { __e2eNoReload?: boolean }).__e2eNoReload)).toBe(true);
});

/** BACKUP_RESTORE_DIR of the system under test: from the environment, or from the gateway's own
 * refusal of a target outside it (which names it, and touches nothing). */
async function restoreDirectory(backupId: string): Promise<string | null> {
  if (process.env.BACKUP_E2E_RESTORE_DIR) return process.env.BACKUP_E2E_RESTORE_DIR;
  const response = await page.request.post(`${API}/${backupId}/restore`, {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
    data: { confirm: backupId, target: { directory: "/" } },
  });
  if (response.status() !== 400) return null;
  const body = (await response.json()) as { error?: { message?: string } };
  return /below the restore directory (\/\S*) \(BACKUP_RESTORE_DIR\)/.exec(body.error?.message ?? "")?.[1] ?? null;
}

test("restores a seeded backup into another directory, once its id is typed, and follows it to the end", async () => {
  const row = backupRow("seeded files backup");
  const backupId = await row.getAttribute("data-backup-id");
  expect(backupId).toMatch(/^[0-9a-f-]{36}$/);
  const id = backupId ?? "";

  await row.getByRole("button", { name: "Restore", exact: true }).click();
  const dialog = page.getByRole("dialog", { name: "Restore backup" });
  await expect(dialog).toBeVisible();
  const restore = dialog.getByRole("button", { name: "Restore", exact: true });
  const confirm = dialog.getByLabel("Type the backup id to confirm");
  await expect(restore).toBeDisabled();
  await confirm.fill(id.slice(0, 8));
  await expect(restore).toBeDisabled();

  // Into a new directory below BACKUP_RESTORE_DIR: nothing live is touched.
  const base = await restoreDirectory(id);
  await dialog.getByRole("radio", { name: /Another directory/ }).check();
  const target = base ? `${base.replace(/\/+$/, "")}/e2e-${RUN}` : "";
  await dialog.getByLabel("Directory", { exact: true }).fill(target || "/restore-directory-unknown");
  await confirm.fill(id);
  await expect(restore).toBeEnabled();
  await page.screenshot({ path: path.join(SCREENSHOTS, "restore-dialog.png") });

  if (!base) {
    test.info().annotations.push({
      type: "note",
      description: "BACKUP_RESTORE_DIR could not be learned; the restore was not submitted",
    });
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await expect(dialog).toHaveCount(0);
    return;
  }
  await restore.click();
  const progress = page.getByRole("dialog", { name: "Restoring backup" });
  await expect(progress.getByRole("progressbar", { name: "Restore progress" })).toBeVisible();
  await expect(progress.getByText(/The restore completed into/)).toBeVisible({ timeout: BACKUP_SECONDS * 1000 });
  await progress.getByRole("button", { name: "Close" }).click();
  await expect(progress).toHaveCount(0);
});

/** A cron expression firing once a day twelve hours from now (UTC), far from any run during the test. */
function cronTwelveHoursAway(): string {
  const later = new Date(Date.now() + 12 * 3_600_000);
  return `${later.getUTCMinutes()} ${later.getUTCHours()} * * *`;
}

test("adds a schedule entry, lists it with its next runs in words, and removes it", async () => {
  const schedule = page.getByRole("region", { name: "Schedule" });
  await schedule.getByRole("button", { name: "Add schedule" }).click();
  const form = schedule.getByRole("form", { name: "New schedule" });
  await form.getByLabel("Name").fill(SCHEDULE_NAME);
  await form.getByLabel("Type").selectOption("files");
  await form.getByLabel("Cron").fill(cronTwelveHoursAway());
  await form.getByLabel("Description").fill("added by the page's end-to-end test");
  await form.getByRole("button", { name: "Save schedule" }).click();

  const entry = schedule.getByRole("row").filter({ hasText: SCHEDULE_NAME });
  await expect(entry).toHaveCount(1);
  await expect(entry.getByText(/^Every day at \d\d:\d\d$/)).toBeVisible();
  await expect(entry.getByText(/^in \d+ hours$/).first()).toBeVisible();
  await expect(entry.getByRole("switch", { name: `${SCHEDULE_NAME} enabled` })).toBeChecked();

  await entry.getByRole("button", { name: "Remove" }).click();
  const dialog = page.getByRole("dialog", { name: `Remove the schedule “${SCHEDULE_NAME}”?` });
  await dialog.getByRole("button", { name: "Remove" }).click();
  await expect(dialog).toHaveCount(0);
  await expect(entry).toHaveCount(0);
});

test("fits a phone's width: the list shows without the page scrolling sideways", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await expect(backupRow("seeded database backup")).toBeVisible();
  await page.getByRole("region", { name: "Backups" }).scrollIntoViewIfNeeded();
  const overflow = await page.evaluate(() => ({
    document: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    body: document.body.scrollWidth - document.body.clientWidth,
  }));
  expect(overflow).toEqual({ document: 0, body: 0 });
  await expect(page.getByRole("button", { name: "Menu" })).toBeVisible();
  await page.setViewportSize({ width: 1280, height: 900 });
});

test("left no error in the browser console", () => {
  // The afterEach check does the work; this names it in the report.
  expect(problems).toEqual([]);
});
