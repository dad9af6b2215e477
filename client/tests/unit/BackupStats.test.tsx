import { screen, within } from "@testing-library/react";
import { describe, expect, it } from "vitest";

import { BackupStats } from "../../src/app/_components/admin/BackupStats";
import { aBackup, aPage, apiError, fakeGateway, json, someStats } from "./gateway";
import { renderSignedIn } from "./render";

describe("BackupStats", () => {
  it("shows totals, the 30-day success rate, storage and verification counts", async () => {
    fakeGateway({
      "GET /api/admin/backup/stats": () => json(200, someStats()),
      "GET /api/admin/backup/list": () => json(200, aPage([])),
    });
    renderSignedIn(<BackupStats />);
    expect(await screen.findByRole("heading", { name: "Statistics" })).toBeInTheDocument();
    expect(await screen.findByText("80.0%")).toBeInTheDocument();
    expect(screen.getByText("4 completed, 1 failed")).toBeInTheDocument();
    expect(screen.getByText("5.00 MiB")).toBeInTheDocument();
    expect(screen.getByText("40.0 GiB free of 100 GiB")).toBeInTheDocument();
    expect(screen.getByRole("meter", { name: "Storage filesystem in use" })).toHaveAttribute("aria-valuenow", "60");
    expect(screen.getByText("1 failed, 0 not yet verified")).toBeInTheDocument();
    expect(
      within(screen.getByRole("list", { name: "Backups by status" })).getByText("4 completed"),
    ).toBeInTheDocument();
  });

  it("gives each type's last success with its age, and flags one too old or missing", async () => {
    fakeGateway({
      "GET /api/admin/backup/stats": () => json(200, someStats()),
      "GET /api/admin/backup/list": () => json(200, aPage([])),
    });
    renderSignedIn(<BackupStats />);
    const byType = await screen.findByRole("table", { name: "By type" });
    const row = (name: string) => within(byType).getByRole("row", { name: new RegExp(`^${name}`) });
    expect(within(row("Full")).getByText("3 hours ago")).toBeInTheDocument();
    expect(within(row("Full")).queryByText(/over 48 hours ago/)).not.toBeInTheDocument();
    expect(within(row("Database")).getByText("3 days ago")).toBeInTheDocument();
    expect(within(row("Database")).getByText("over 48 hours ago")).toBeInTheDocument();
    expect(within(row("Files")).getByText("never")).toBeInTheDocument();
  });

  it("says when the storage does not report free space", async () => {
    fakeGateway({
      "GET /api/admin/backup/stats": () =>
        json(200, someStats({ storage: { used_bytes: 0, filesystem_free_bytes: null, filesystem_total_bytes: null } })),
      "GET /api/admin/backup/list": () => json(200, aPage([])),
    });
    renderSignedIn(<BackupStats />);
    expect(await screen.findByText("Free space unknown (the storage does not say).")).toBeInTheDocument();
  });

  it("draws the completed backups' sizes over time, with a description and the data as a table", async () => {
    const gateway = fakeGateway({
      "GET /api/admin/backup/stats": () => json(200, someStats()),
      "GET /api/admin/backup/list": () =>
        json(
          200,
          aPage([
            aBackup({
              type: "full",
              size_bytes: 3 * 1024 * 1024,
              completed_at: "2025-12-02T02:10:00Z",
              description: "nightly",
            }),
            aBackup({ type: "database", size_bytes: 1024 * 1024, completed_at: "2025-12-01T02:05:00Z" }),
          ]),
        ),
    });
    renderSignedIn(<BackupStats />);
    const chart = await screen.findByRole("img", { name: "Backup sizes over time" });
    expect(chart.querySelectorAll("circle, rect, polygon")).toHaveLength(2);
    expect(chart).toHaveAccessibleDescription(/2 completed backups .* the largest is 3.00 MiB \(full/);
    expect(screen.getByText("The chart's data as a table")).toBeInTheDocument();
    const history = gateway
      .to("GET /api/admin/backup/list")
      .find((r) => r.url.searchParams.get("status") === "completed");
    expect(history?.url.searchParams.get("limit")).toBe("200");
  });

  it("shows an error in words, not a blank section", async () => {
    fakeGateway({
      "GET /api/admin/backup/stats": () =>
        apiError(503, "unavailable", "the catalog database does not answer; try again shortly"),
      "GET /api/admin/backup/list": () => json(200, aPage([])),
    });
    renderSignedIn(<BackupStats />);
    expect(await screen.findByRole("alert")).toHaveTextContent(
      "The statistics could not be loaded. the catalog database does not answer; try again shortly",
    );
  });
});
