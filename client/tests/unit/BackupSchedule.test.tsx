import { screen, waitFor, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";

import { BackupSchedule } from "../../src/app/_components/admin/BackupSchedule";
import type { ScheduleDocument, SettingsDocument } from "../../src/lib/backupApi";
import { aPage, apiError, aSchedule, fakeGateway, json, someSettings } from "./gateway";
import { renderSignedIn } from "./render";

/** A gateway holding the schedule and settings documents, saving them as PUT and PATCH say. */
function documentsGateway() {
  let schedule = aSchedule();
  let settings = someSettings();
  const gateway = fakeGateway({
    "GET /api/admin/backup/list": () => json(200, aPage([])),
    "GET /api/admin/backup/schedule": () => json(200, schedule),
    "PUT /api/admin/backup/schedule": (request) => {
      schedule = aSchedule(request.body as ScheduleDocument, schedule.revision + 1);
      return json(200, schedule);
    },
    "GET /api/admin/backup/settings": () => json(200, settings),
    "PATCH /api/admin/backup/settings": (request) => {
      const patch = request.body as { retention: SettingsDocument["retention"] };
      settings = {
        ...settings,
        revision: settings.revision + 1,
        document: { ...settings.document, retention: { ...settings.document.retention, ...patch.retention } },
      };
      return json(200, settings);
    },
  });
  return gateway;
}

function rowOf(name: string) {
  const row = screen.getByRole("table", { name: "Scheduled backups" }).querySelector(`tr[data-schedule="${name}"]`);
  if (!(row instanceof HTMLElement)) throw new Error(`no schedule row ${name}`);
  return row;
}

describe("BackupSchedule", () => {
  it("lists the entries with their cron in words and their next runs", async () => {
    documentsGateway();
    renderSignedIn(<BackupSchedule />);
    await screen.findByRole("table", { name: "Scheduled backups" });
    const daily = rowOf("daily");
    expect(within(daily).getByText("Monday to Saturday at 02:00")).toBeInTheDocument();
    expect(within(daily).getByText("0 2 * * 1-6")).toBeInTheDocument();
    expect(within(daily).getByText("in 5 hours")).toBeInTheDocument();
    expect(within(daily).getByRole("switch", { name: "daily enabled" })).toBeChecked();
    const weekly = rowOf("weekly-full");
    expect(within(weekly).getByText("disabled: does not run")).toBeInTheDocument();
    expect(within(weekly).getByRole("switch", { name: "weekly-full enabled" })).not.toBeChecked();
    expect(screen.getByText("UTC")).toBeInTheDocument();
  });

  it("adds an entry, saved on the revision read, and lists it with its next runs", async () => {
    const gateway = documentsGateway();
    const { user } = renderSignedIn(<BackupSchedule />);
    await user.click(await screen.findByRole("button", { name: "Add schedule" }));
    const form = screen.getByRole("form", { name: "New schedule" });
    await user.type(within(form).getByLabelText("Name"), "hourly-files");
    await user.selectOptions(within(form).getByLabelText("Type"), "files");
    const cron = within(form).getByLabelText("Cron");
    await user.clear(cron);
    await user.type(cron, "15 * * * *");
    expect(within(form).getByText("Every hour at minute 15 (UTC)")).toBeInTheDocument();
    await user.click(within(form).getByRole("button", { name: "Save schedule" }));

    await waitFor(() => expect(rowOf("hourly-files")).toBeInTheDocument());
    expect(within(rowOf("hourly-files")).getByText("in 5 hours")).toBeInTheDocument();
    const [put] = gateway.to("PUT /api/admin/backup/schedule");
    expect(put?.headers.get("If-Match")).toBe('"3"');
    expect((put?.body as ScheduleDocument).schedules.at(-1)).toEqual({
      name: "hourly-files",
      type: "files",
      cron: "15 * * * *",
      description: "",
      enabled: true,
      archive: false,
    });
    expect(screen.getByText("Schedule “hourly-files” saved.")).toBeInTheDocument();
  });

  it("shows the gateway's refusal next to the field it concerns", async () => {
    const gateway = documentsGateway();
    gateway.on("PUT /api/admin/backup/schedule", () =>
      apiError(400, "invalid_request", "schedules.2.cron: invalid cron expression: bad day of month", [
        { field: "schedules.2.cron", message: "invalid cron expression: bad day of month" },
      ]),
    );
    const { user } = renderSignedIn(<BackupSchedule />);
    await user.click(await screen.findByRole("button", { name: "Add schedule" }));
    const form = screen.getByRole("form", { name: "New schedule" });
    await user.type(within(form).getByLabelText("Name"), "odd");
    const cron = within(form).getByLabelText("Cron");
    await user.clear(cron);
    await user.type(cron, "0 0 31 2 *");
    await user.click(within(form).getByRole("button", { name: "Save schedule" }));
    const message = await within(form).findByText("invalid cron expression: bad day of month");
    expect(cron).toHaveAttribute("aria-invalid", "true");
    expect(cron).toHaveAccessibleDescription(expect.stringContaining("invalid cron expression: bad day of month"));
    expect(message).toBeVisible();
  });

  it("checks a name and a cron expression before sending them", async () => {
    const gateway = documentsGateway();
    const { user } = renderSignedIn(<BackupSchedule />);
    await user.click(await screen.findByRole("button", { name: "Add schedule" }));
    const form = screen.getByRole("form", { name: "New schedule" });
    await user.type(within(form).getByLabelText("Name"), "daily");
    const cron = within(form).getByLabelText("Cron");
    await user.clear(cron);
    await user.type(cron, "0 2 * *");
    await user.click(within(form).getByRole("button", { name: "Save schedule" }));
    expect(within(form).getByText("There is already a schedule named “daily”.")).toBeInTheDocument();
    expect(within(form).getByText(/has five fields/, { selector: "p[id$='-cron-error']" })).toBeInTheDocument();
    expect(gateway.to("PUT /api/admin/backup/schedule")).toHaveLength(0);
  });

  it("says so when someone else changed the schedule meanwhile, and saves on theirs the second time", async () => {
    const gateway = documentsGateway();
    let refused = false;
    gateway.on("PUT /api/admin/backup/schedule", (request) => {
      if (!refused) {
        refused = true;
        return apiError(
          412,
          "precondition_failed",
          "the schedule document is at revision 4, not 3: someone changed it meanwhile; read it again and reapply your change",
        );
      }
      return json(200, aSchedule(request.body as ScheduleDocument, 5));
    });
    gateway.on("GET /api/admin/backup/schedule", () => json(200, aSchedule({}, refused ? 4 : 3)));
    const { user } = renderSignedIn(<BackupSchedule />);
    await user.click(await screen.findByRole("switch", { name: "weekly-full enabled" }));
    expect(await screen.findByText(/someone changed it meanwhile/)).toBeInTheDocument();
    await waitFor(() => expect(screen.getByText(/^Revision 4/)).toBeInTheDocument());
    await user.click(screen.getByRole("switch", { name: "weekly-full enabled" }));
    await waitFor(() => expect(screen.getByRole("switch", { name: "weekly-full enabled" })).toBeChecked());
    expect(gateway.to("PUT /api/admin/backup/schedule").map((r) => r.headers.get("If-Match"))).toEqual(['"3"', '"4"']);
  });

  it("edits an entry in place", async () => {
    const gateway = documentsGateway();
    const { user } = renderSignedIn(<BackupSchedule />);
    await screen.findByRole("table", { name: "Scheduled backups" });
    await user.click(within(rowOf("daily")).getByRole("button", { name: "Edit" }));
    const form = screen.getByRole("form", { name: "Edit schedule daily" });
    const cron = within(form).getByLabelText("Cron");
    await user.clear(cron);
    await user.type(cron, "30 1 * * *");
    await user.click(within(form).getByRole("button", { name: "Save schedule" }));
    await waitFor(() => expect(within(rowOf("daily")).getByText("Every day at 01:30")).toBeInTheDocument());
    const saved = gateway.to("PUT /api/admin/backup/schedule")[0]?.body as ScheduleDocument;
    expect(saved.schedules.map((e) => e.name)).toEqual(["daily", "weekly-full"]);
  });

  it("removes an entry after asking", async () => {
    documentsGateway();
    const { user } = renderSignedIn(<BackupSchedule />);
    await screen.findByRole("table", { name: "Scheduled backups" });
    await user.click(within(rowOf("weekly-full")).getByRole("button", { name: "Remove" }));
    const dialog = screen.getByRole("dialog", { name: "Remove the schedule “weekly-full”?" });
    await user.click(within(dialog).getByRole("button", { name: "Remove" }));
    await waitFor(() => expect(screen.queryByRole("dialog")).not.toBeInTheDocument());
    expect(
      screen.getByRole("table", { name: "Scheduled backups" }).querySelector('tr[data-schedule="weekly-full"]'),
    ).toBeNull();
  });

  it("saves the retention policy as a merge patch, with the gateway's errors next to their field", async () => {
    const gateway = documentsGateway();
    const { user } = renderSignedIn(<BackupSchedule />);
    const form = await screen.findByRole("form", { name: "Retention policy" });
    const keepLast = within(form).getByLabelText("Keep last");
    await user.clear(keepLast);
    await user.type(keepLast, "5");
    await user.type(within(form).getByLabelText("Maximum age (days)"), "90");
    await user.click(within(form).getByRole("button", { name: "Save retention policy" }));
    expect(await within(form).findByText("Saved (revision 8).")).toBeInTheDocument();
    const [patch] = gateway.to("PATCH /api/admin/backup/settings");
    expect(patch?.headers.get("If-Match")).toBe('"7"');
    expect(patch?.body).toEqual({
      retention: { keep_last: 5, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_yearly: 0, max_age_days: 90 },
    });

    gateway.on("PATCH /api/admin/backup/settings", () =>
      apiError(400, "invalid_request", "retention.keep_daily: Input should be less than or equal to 3650", [
        { field: "retention.keep_daily", message: "Input should be less than or equal to 3650" },
      ]),
    );
    const daily = within(form).getByLabelText("Daily");
    await user.clear(daily);
    await user.type(daily, "5000");
    await user.click(within(form).getByRole("button", { name: "Save retention policy" }));
    expect(await within(form).findByText("Input should be less than or equal to 3650")).toBeInTheDocument();
    expect(daily).toHaveAttribute("aria-invalid", "true");
  });

  it("previews what the saved policy would keep and delete", async () => {
    const gateway = documentsGateway();
    gateway.on("GET /api/admin/backup/retention", () =>
      json(200, {
        keep: [{ id: "k1", reasons: ["last"] }],
        delete: [{ id: "d1d1d1d1-0000", reason: "not kept by any rule" }],
      }),
    );
    const { user } = renderSignedIn(<BackupSchedule />);
    await user.click(await screen.findByRole("button", { name: "Preview what the policy keeps" }));
    expect(await screen.findByText(/Applied now, the saved policy keeps/)).toHaveTextContent(
      "Applied now, the saved policy keeps 1 completed backup and deletes 1.",
    );
    expect(screen.getByText(/not kept by any rule/)).toBeInTheDocument();
  });
});
