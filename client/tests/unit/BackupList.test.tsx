import { act, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { BackupList, LIST_POLL_MS, VERIFICATION_POLL_MS } from "../../src/app/_components/admin/BackupList";
import type { BackupDetail } from "../../src/lib/backupApi";
import { aBackup, aPage, apiError, fakeGateway, json } from "./gateway";
import { renderSignedIn } from "./render";

afterEach(() => {
  vi.useRealTimers();
});

function table() {
  return screen.getByRole("table", { name: "Backups" });
}

function rowOf(text: string) {
  const row = within(table()).getByText(text).closest("tr");
  if (!row) throw new Error(`no row with ${text}`);
  return row;
}

describe("BackupList", () => {
  it("shows each backup's type, status, verification, description, size, date and trigger", async () => {
    fakeGateway({
      "GET /api/admin/backup/list": () =>
        json(
          200,
          aPage([
            aBackup({
              type: "files",
              description: "seeded files backup",
              size_bytes: 5 * 1024 * 1024,
              trigger: "schedule",
              schedule: "daily",
            }),
            aBackup({
              type: "database",
              status: "failed",
              description: "",
              error: "the source server went away",
              verification: { status: "pending", checked_at: null, error: null, checks: [] },
            }),
          ]),
        ),
    });
    renderSignedIn(<BackupList />);
    await screen.findByText("seeded files backup");
    const files = rowOf("seeded files backup");
    expect(within(files).getByText("Files")).toBeInTheDocument();
    expect(within(files).getByText("completed")).toBeInTheDocument();
    expect(within(files).getByText("verified")).toBeInTheDocument();
    expect(within(files).getByText("5.00 MiB")).toBeInTheDocument();
    expect(within(files).getByText("scheduled: daily")).toBeInTheDocument();
    expect(within(files).getByRole("button", { name: "Restore" })).toBeEnabled();

    const failed = rowOf("No description");
    expect(within(failed).getByText("failed")).toBeInTheDocument();
    expect(within(failed).getByText("the source server went away")).toBeInTheDocument();
    expect(within(failed).getByText("by hand (admin)")).toBeInTheDocument();
    expect(within(failed).getByRole("button", { name: "Restore" })).toBeDisabled();
    expect(within(failed).getByRole("button", { name: "Download" })).toBeDisabled();
    expect(within(failed).getByRole("button", { name: "Delete" })).toBeEnabled();
  });

  it("filters by type and status, and pages through the total", async () => {
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": (request) => {
        const offset = Number(request.url.searchParams.get("offset") ?? 0);
        return json(200, aPage([aBackup({ description: `row at ${offset}` })], 60, 25, offset));
      },
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText("row at 0");
    expect(screen.getByText("Showing 1–1 of 60")).toBeInTheDocument();
    // (The other list request, limit=1, is the sign-in's check of the token.)
    const pageReads = () =>
      gateway.to("GET /api/admin/backup/list").filter((r) => r.url.searchParams.get("limit") === "25");
    expect(pageReads().at(-1)?.url.searchParams.get("status")).toBe("pending,running,completed,failed,deleting");

    await user.selectOptions(screen.getByLabelText("Filter by type"), "incremental");
    await user.selectOptions(screen.getByLabelText("Filter by status"), "failed");
    await waitFor(() => {
      const last = pageReads().at(-1);
      expect(last?.url.searchParams.get("type")).toBe("incremental");
      expect(last?.url.searchParams.get("status")).toBe("failed");
    });

    await user.click(screen.getByRole("button", { name: "Next page" }));
    await screen.findByText("row at 25");
    expect(screen.getByRole("button", { name: "Previous page" })).toBeEnabled();
  });

  it("starts a backup from the form: the row shows at once and follows it to completed without a reload", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    let created: BackupDetail | null = null;
    let reads = 0;
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => {
        if (!created) return json(200, aPage([aBackup({ description: "older" })]));
        reads += 1;
        const now: BackupDetail =
          reads === 1
            ? created
            : reads === 2
              ? {
                  ...created,
                  status: "running",
                  parts: created.parts.map((p) => ({
                    ...p,
                    status: "running",
                    progress: { phase: "dumping", tables_done: 1, tables_total: 4 },
                  })),
                  progress: { parts_completed: 0, parts_total: 1 },
                }
              : { ...created, status: "completed", size_bytes: 4096 };
        return json(200, aPage([now, aBackup({ description: "older" })]));
      },
      "POST /api/admin/backup/create": (request) => {
        const body = request.body as { type: BackupDetail["type"]; description: string };
        created = aBackup({ type: body.type, description: body.description, status: "pending", size_bytes: 0 });
        return json(202, { backup: created });
      },
    });
    const onChange = vi.fn();
    const { user } = renderSignedIn(<BackupList onChange={onChange} />, { fakeTimers: true });
    await screen.findByText("older");

    await user.click(screen.getByRole("button", { name: "Create backup" }));
    const form = screen.getByRole("form", { name: "Create backup" });
    await user.selectOptions(within(form).getByLabelText("Type"), "database");
    await user.type(within(form).getByLabelText("Description"), "before the upgrade");
    await user.click(within(form).getByRole("button", { name: "Start backup" }));

    expect(await within(table()).findByText("before the upgrade")).toBeInTheDocument();
    expect(within(rowOf("before the upgrade")).getByText("pending")).toBeInTheDocument();
    const [request] = gateway.to("POST /api/admin/backup/create");
    expect(request?.body).toEqual({ type: "database", description: "before the upgrade" });
    expect(request?.headers.get("Idempotency-Key")).toMatch(/^[0-9a-f]{32}$/);

    await act(() => vi.advanceTimersByTimeAsync(LIST_POLL_MS));
    await waitFor(() => expect(within(rowOf("before the upgrade")).getByText("running")).toBeInTheDocument());
    expect(within(rowOf("before the upgrade")).getByRole("progressbar")).toHaveAttribute("aria-valuenow", "25");

    await act(() => vi.advanceTimersByTimeAsync(LIST_POLL_MS));
    await waitFor(() => expect(within(rowOf("before the upgrade")).getByText("completed")).toBeInTheDocument());
    expect(screen.getByText(/\(before the upgrade\) is completed\./)).toBeInTheDocument();
    expect(onChange).toHaveBeenCalled();
  });

  it("turns a just-completed backup's badge to verified when the automatic verification ends", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    const fresh = aBackup({
      description: "just made",
      completed_at: new Date().toISOString(),
      verification: { status: "pending", checked_at: null, error: null, checks: [] },
    });
    let verified = false;
    fakeGateway({
      "GET /api/admin/backup/list": () =>
        json(
          200,
          aPage([
            verified
              ? {
                  ...fresh,
                  verification: { ...fresh.verification, status: "verified", checked_at: new Date().toISOString() },
                }
              : fresh,
          ]),
        ),
    });
    renderSignedIn(<BackupList />, { fakeTimers: true });
    await screen.findByText("just made");
    expect(within(rowOf("just made")).getByText("not yet verified")).toBeInTheDocument();
    verified = true;
    await act(() => vi.advanceTimersByTimeAsync(VERIFICATION_POLL_MS));
    await waitFor(() => expect(within(rowOf("just made")).getByText("verified")).toBeInTheDocument());
  });

  it("shows the gateway's refusal to start a backup next to the form", async () => {
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([])),
      "POST /api/admin/backup/create": () =>
        apiError(400, "invalid_request", "description: String should have at most 500 characters", [
          { field: "description", message: "String should have at most 500 characters" },
        ]),
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText(/No backups yet/);
    await user.click(screen.getByRole("button", { name: "Create backup" }));
    await user.click(screen.getByRole("button", { name: "Start backup" }));
    expect(await screen.findByText("String should have at most 500 characters")).toBeInTheDocument();
    expect(screen.getByLabelText("Description")).toHaveAttribute("aria-invalid", "true");
  });

  it("asks before deleting, and shows why the gateway refused when a chain needs the backup", async () => {
    const base = aBackup({ type: "files", description: "the base" });
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([base])),
      "DELETE /api/admin/backup/:id": () =>
        apiError(
          409,
          "backup_has_dependents",
          `backup ${base.id} is needed to restore the incremental backups x: delete those first, newest first`,
        ),
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText("the base");
    await user.click(within(rowOf("the base")).getByRole("button", { name: "Delete" }));

    const dialog = screen.getByRole("dialog", { name: "Delete this backup?" });
    expect(gateway.to(`DELETE /api/admin/backup/${base.id}`)).toHaveLength(0);
    await user.click(within(dialog).getByRole("button", { name: "Delete" }));
    expect(await within(dialog).findByRole("alert")).toHaveTextContent(
      "is needed to restore the incremental backups x",
    );
    expect(within(dialog).getByRole("button", { name: "Delete" })).toBeDisabled();

    await user.keyboard("{Escape}");
    expect(screen.queryByRole("dialog")).not.toBeInTheDocument();
  });

  it("deletes once confirmed, and the row says it is being deleted", async () => {
    const backup = aBackup({ description: "old one" });
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([backup])),
      "DELETE /api/admin/backup/:id": () => json(202, { backup: { ...backup, status: "deleting" } }),
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText("old one");
    await user.click(within(rowOf("old one")).getByRole("button", { name: "Delete" }));
    await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Delete" }));
    await waitFor(() => expect(screen.queryByRole("dialog")).not.toBeInTheDocument());
    expect(screen.getByText(/is being deleted/)).toBeInTheDocument();
  });

  it("verifies again and shows the new verdict when it arrives", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    const backup = aBackup({ description: "check me" });
    let reads = 0;
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([backup])),
      "POST /api/admin/backup/:id/verify": () => json(202, { backup }),
      "GET /api/admin/backup/:id": () => {
        reads += 1;
        const verification =
          reads < 2
            ? backup.verification
            : {
                status: "failed" as const,
                checked_at: "2025-12-03T00:00:00Z",
                error: "database.archive_digest",
                checks: [],
              };
        return json(200, { backup: { ...backup, verification } });
      },
    });
    const { user } = renderSignedIn(<BackupList />, { fakeTimers: true });
    await screen.findByText("check me");
    await user.click(within(rowOf("check me")).getByRole("button", { name: "Verify" }));
    expect(await within(rowOf("check me")).findByText("verifying…")).toBeInTheDocument();
    await act(() => vi.advanceTimersByTimeAsync(3000));
    expect(await within(rowOf("check me")).findByText("verification failed")).toBeInTheDocument();
    expect(screen.getByText(/failed verification: database.archive_digest/)).toBeInTheDocument();
  });

  it("downloads the archive with the token and hands it to the browser under its own name", async () => {
    const backup = aBackup({ description: "to download" });
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([backup])),
      "GET /api/admin/backup/:id/download": () =>
        new Response(new Uint8Array([80, 75, 3, 4]), {
          headers: {
            "Content-Type": "application/zip",
            "Content-Disposition": 'attachment; filename="database.zip"',
            "Content-Length": "4",
          },
        }),
    });
    const createObjectURL = vi.fn(() => "blob:archive");
    vi.stubGlobal("URL", Object.assign(URL, { createObjectURL, revokeObjectURL: vi.fn() }));
    const clicked: HTMLAnchorElement[] = [];
    vi.spyOn(HTMLAnchorElement.prototype, "click").mockImplementation(function (this: HTMLAnchorElement) {
      clicked.push(this);
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText("to download");
    await user.click(within(rowOf("to download")).getByRole("button", { name: "Download" }));
    await waitFor(() => expect(clicked).toHaveLength(1));
    expect(clicked[0]?.download).toBe("database.zip");
    expect(gateway.to(`GET /api/admin/backup/${backup.id}/download`)[0]?.headers.get("Authorization")).toBe(
      "Bearer admin-token",
    );
    expect(await screen.findByText(/downloaded \(4 B\)/)).toBeInTheDocument();
  });

  it("shows a backup's details under its row: parts, checks and the paths it left out", async () => {
    const backup = aBackup({ type: "files", description: "with warnings", warning_count: 1 });
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([backup])),
      "GET /api/admin/backup/:id": () =>
        json(200, {
          backup: {
            ...backup,
            warnings: [{ part: "files", path: "uploads/run/app.sock", reason: "socket" }],
            verification: {
              ...backup.verification,
              checks: [{ name: "files.archive_digest", ok: true, detail: "size and SHA-256 match", seconds: 0.1 }],
            },
          },
        }),
    });
    const { user } = renderSignedIn(<BackupList />);
    await screen.findByText("with warnings");
    expect(within(rowOf("with warnings")).getByText("1 path left out")).toBeInTheDocument();
    const toggle = within(rowOf("with warnings")).getByRole("button", { name: "Details" });
    await user.click(toggle);
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    expect(await screen.findByText("files.archive_digest")).toBeInTheDocument();
    expect(screen.getByText("uploads/run/app.sock")).toBeInTheDocument();
  });

  it("says what failed when the list cannot be loaded, and tries again on request", async () => {
    let fail = true;
    fakeGateway({
      "GET /api/admin/backup/list": () =>
        fail
          ? apiError(503, "unavailable", "the catalog database does not answer; try again shortly")
          : json(200, aPage([aBackup({ description: "back" })])),
    });
    const { user } = renderSignedIn(<BackupList />);
    expect(await screen.findByText(/the catalog database does not answer/)).toBeInTheDocument();
    fail = false;
    await user.click(screen.getByRole("button", { name: "Try again" }));
    expect(await screen.findByText("back")).toBeInTheDocument();
  });
});
