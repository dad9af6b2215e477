import { act, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { BackupRestore } from "../../src/app/_components/admin/BackupRestore";
import type { Restore } from "../../src/lib/backupApi";
import { aBackup, aPage, apiError, aRestore, fakeGateway, json } from "./gateway";
import { renderSignedIn } from "./render";

afterEach(() => {
  vi.useRealTimers();
});

const full = aBackup({
  id: "4f6c53be-33b4-4d79-a683-b5b216754afd",
  type: "full",
  description: "nightly full",
  parts: [
    { ...aBackup().parts[0]!, part: "database" },
    { ...aBackup().parts[0]!, part: "files" },
  ],
});

describe("BackupRestore", () => {
  it("is a dialog whose Restore stays disabled until the backup's id is typed", async () => {
    fakeGateway({ "GET /api/admin/backup/list": () => json(200, aPage([])) });
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={() => {}} />);
    const dialog = screen.getByRole("dialog", { name: "Restore backup" });
    const restore = within(dialog).getByRole("button", { name: "Restore" });
    const confirm = within(dialog).getByLabelText("Type the backup id to confirm");
    expect(restore).toBeDisabled();
    await user.type(confirm, full.id.slice(0, 20));
    expect(restore).toBeDisabled();
    await user.type(confirm, full.id.slice(20));
    expect(restore).toBeEnabled();
  });

  it("restores in place after a safety backup by default, with every part", async () => {
    const waiting = aRestore({ safety_backup: true, safety_backup_id: "5afe5afe-0000-4000-8000-000000000000" });
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([])),
      "POST /api/admin/backup/:id/restore": () => json(202, { restore: waiting }),
      "GET /api/admin/backup/restores/:id": () => json(200, { restore: waiting }),
      "GET /api/admin/backup/:id": () => json(200, { backup: aBackup({ status: "running" }) }),
    });
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={() => {}} />);
    const dialog = screen.getByRole("dialog");
    expect(within(dialog).getByRole("radio", { name: /In place/ })).toBeChecked();
    expect(within(dialog).getByRole("checkbox", { name: "Take a safety backup first" })).toBeChecked();
    await user.type(within(dialog).getByLabelText("Type the backup id to confirm"), full.id.toUpperCase());
    await user.click(within(dialog).getByRole("button", { name: "Restore" }));
    await waitFor(() => expect(gateway.to(`POST /api/admin/backup/${full.id}/restore`)).toHaveLength(1));
    expect(gateway.requests.find((r) => r.method === "POST")?.body).toEqual({
      confirm: full.id.toUpperCase(),
      safety_backup: true,
    });
    expect(await within(dialog).findByText(/First a safety backup of what will be replaced/)).toBeInTheDocument();
  });

  it("restores the files into another directory, only the paths chosen, and follows it to the end", async () => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
    const running = aRestore({
      status: "running",
      parts: [
        { ...aRestore().parts[0]!, status: "running", progress: { phase: "writing", files_done: 2, files_total: 8 } },
      ],
    });
    const completed = aRestore({
      status: "completed",
      completed_at: "2025-12-01T11:05:00Z",
      parts: [{ ...aRestore().parts[0]!, status: "completed" }],
    });
    let current: Restore = running;
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([])),
      "POST /api/admin/backup/:id/restore": () => json(202, { restore: aRestore() }),
      "GET /api/admin/backup/restores/:id": () => json(200, { restore: current }),
    });
    const onFinished = vi.fn();
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={() => {}} onFinished={onFinished} />, {
      fakeTimers: true,
    });
    const dialog = screen.getByRole("dialog");
    await user.click(within(dialog).getByRole("radio", { name: /Another directory/ }));
    expect(within(dialog).queryByLabelText("Tables (optional)")).not.toBeInTheDocument();
    await user.type(within(dialog).getByLabelText("Directory"), "/restores/copy");
    await user.type(within(dialog).getByLabelText("Paths (optional)"), "configs\nuploads/2025\n");
    await user.type(within(dialog).getByLabelText("Type the backup id to confirm"), full.id);
    await user.click(within(dialog).getByRole("button", { name: "Restore" }));

    expect(await screen.findByRole("dialog", { name: "Restoring backup" })).toBeInTheDocument();
    expect(gateway.requests.find((r) => r.method === "POST")?.body).toEqual({
      confirm: full.id,
      parts: ["files"],
      target: { directory: "/restores/copy", replace: false },
      paths: ["configs", "uploads/2025"],
    });
    expect(await screen.findByText("writing, 2/8 files")).toBeInTheDocument();
    expect(screen.getByRole("progressbar", { name: "Restore progress" })).toHaveAttribute("aria-valuenow", "25");
    expect(screen.getByText(/Closing this dialog does not stop the restore/)).toBeInTheDocument();
    current = completed;
    await act(() => vi.advanceTimersByTimeAsync(6000));
    expect(await screen.findByText(/The restore completed into \/restores\/x/)).toBeInTheDocument();
    expect(onFinished).toHaveBeenCalledWith(expect.objectContaining({ status: "completed" }));
  });

  it("puts the gateway's refusal next to the field it names", async () => {
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([])),
      "POST /api/admin/backup/:id/restore": () =>
        apiError(
          409,
          "target_not_empty",
          'database app_copy is not empty (3 tables); choose a new one or send "replace": true to replace its contents',
        ),
    });
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={() => {}} />);
    const dialog = screen.getByRole("dialog");
    await user.click(within(dialog).getByRole("radio", { name: /Another database/ }));
    const database = within(dialog).getByLabelText("Database name");
    await user.type(database, "app_copy");
    await user.type(within(dialog).getByLabelText("Tables (optional)"), "orders");
    await user.type(within(dialog).getByLabelText("Type the backup id to confirm"), full.id);
    await user.click(within(dialog).getByRole("button", { name: "Restore" }));
    expect(
      await within(dialog).findByText(/database app_copy is not empty/, { selector: "p[id$='-database-error']" }),
    ).toBeInTheDocument();
    expect(database).toHaveAttribute("aria-invalid", "true");
    expect(within(dialog).getByRole("button", { name: "Restore" })).toBeEnabled();
  });

  it("refuses a database name or a relative directory before asking the gateway", async () => {
    const gateway = fakeGateway({ "GET /api/admin/backup/list": () => json(200, aPage([])) });
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={() => {}} />);
    const dialog = screen.getByRole("dialog");
    await user.click(within(dialog).getByRole("radio", { name: /Another directory/ }));
    await user.type(within(dialog).getByLabelText("Directory"), "restores/copy");
    await user.type(within(dialog).getByLabelText("Type the backup id to confirm"), full.id);
    await user.click(within(dialog).getByRole("button", { name: "Restore" }));
    expect(within(dialog).getByLabelText("Directory")).toHaveAccessibleDescription(/Give an absolute path/);
    expect(gateway.requests.filter((r) => r.method === "POST")).toHaveLength(0);
  });

  it("offers only the targets the backup's parts allow", async () => {
    fakeGateway({ "GET /api/admin/backup/list": () => json(200, aPage([])) });
    renderSignedIn(<BackupRestore backup={aBackup({ type: "database" })} onClose={() => {}} />);
    expect(screen.getByRole("radio", { name: /Another database/ })).toBeEnabled();
    expect(screen.getByRole("radio", { name: /Another directory/ })).toBeDisabled();
    // Let the sign-in's check of the token finish inside the test.
    await act(() => new Promise((resolve) => setTimeout(resolve, 0)));
  });

  it("closes on Escape and on Cancel", async () => {
    fakeGateway({ "GET /api/admin/backup/list": () => json(200, aPage([])) });
    const onClose = vi.fn();
    const { user } = renderSignedIn(<BackupRestore backup={full} onClose={onClose} />);
    await user.keyboard("{Escape}");
    await user.click(within(screen.getByRole("dialog")).getByRole("button", { name: "Cancel" }));
    expect(onClose).toHaveBeenCalledTimes(2);
  });
});
