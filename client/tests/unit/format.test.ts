import { describe, expect, it } from "vitest";

import { cronProblem, describeCron } from "../../src/lib/cron";
import { formatBytes, formatPercent, formatRelative, shortId } from "../../src/lib/format";
import { backupProgress, describeOffsite, describePartProgress } from "../../src/lib/progress";
import { aBackup } from "./gateway";

describe("sizes, ages and ids", () => {
  it("writes sizes in binary units with three significant digits", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.50 KiB");
    expect(formatBytes(12.3 * 1024 ** 3)).toBe("12.3 GiB");
    expect(formatBytes(2 ** 40)).toBe("1.00 TiB");
  });

  it("writes ages in words", () => {
    const now = new Date("2025-12-02T12:00:00Z");
    expect(formatRelative("2025-12-02T09:00:00Z", now)).toBe("3 hours ago");
    expect(formatRelative("2025-12-02T12:05:00Z", now)).toBe("in 5 minutes");
    expect(formatRelative("2025-12-02T11:59:50Z", now)).toBe("just now");
    expect(formatRelative(null, now)).toBe("never");
  });

  it("writes shares and ids briefly", () => {
    expect(formatPercent(0.8)).toBe("80.0%");
    expect(formatPercent(1)).toBe("100%");
    expect(shortId("4f6c53be-33b4-4d79-a683-b5b216754afd")).toBe("4f6c53be");
  });
});

describe("cron expressions in words", () => {
  it("says the schedule's usual expressions plainly", () => {
    expect(describeCron("0 2 * * *")).toBe("Every day at 02:00");
    expect(describeCron("0 2 * * 1-6")).toBe("Monday to Saturday at 02:00");
    expect(describeCron("0 2 * * 0")).toBe("Sundays at 02:00");
    expect(describeCron("0 3 1 * *")).toBe("On day 1 of the month at 03:00");
    expect(describeCron("*/15 * * * *")).toBe("Every 15 minutes");
    expect(describeCron("30 * * * *")).toBe("Every hour at minute 30");
  });

  it("tells a malformed expression early, naming the field", () => {
    expect(cronProblem("0 2 * *")).toMatch(/five fields/);
    expect(cronProblem("0 25 * * *")).toBe('The hour field "25" is not valid.');
    expect(cronProblem("0 2 * * mon-fri")).toBeNull();
    expect(describeCron("nonsense")).toBe("Not a valid cron expression");
  });
});

describe("progress", () => {
  it("counts completed parts and the share done of running ones", () => {
    const backup = aBackup({
      type: "full",
      status: "running",
      progress: { parts_completed: 1, parts_total: 2 },
      parts: [
        { ...aBackup().parts[0]!, part: "files", status: "completed" },
        {
          ...aBackup().parts[0]!,
          part: "database",
          status: "running",
          progress: { phase: "dumping", tables_done: 5, tables_total: 10 },
        },
      ],
    });
    expect(backupProgress(backup)).toEqual({ value: 0.75, text: "database: dumping, 5/10 tables" });
  });

  it("says a pending backup waits for a worker, with no share done", () => {
    expect(backupProgress(aBackup({ status: "pending" }))).toEqual({ value: null, text: "waiting for a worker" });
  });

  it("describes a part's progress as backupctl does", () => {
    expect(describePartProgress({ phase: "writing", files_done: 3, files_total: 9 })).toBe("writing, 3/9 files");
    expect(describePartProgress(null)).toBe("waiting");
  });
});

describe("off-site copies", () => {
  const copy = {
    status: "pending" as const,
    copied_at: null,
    error: null,
    attempts: 0,
    bytes_copied: 0,
    next_attempt_at: null,
    location: null,
    retain_until: null,
    local_removed_at: null,
  };

  it("says nothing of a backup that has no off-site copy", () => {
    expect(describeOffsite(null)).toBeNull();
  });

  it("says where a copy is, and what failed and when it is tried again", () => {
    expect(describeOffsite(copy)).toBe("Waiting to be copied");
    expect(describeOffsite({ ...copy, bytes_copied: 3 * 1024 ** 2 })).toBe("Copying: 3.00 MiB sent");
    const copied = describeOffsite({ ...copy, status: "copied", copied_at: "2025-12-01T10:02:00Z", location: "s3://b/p/x/" });
    expect(copied).toMatch(/^Copied .+ to s3:\/\/b\/p\/x\/$/);
    const failed = describeOffsite({ ...copy, status: "failed", attempts: 2, error: "endpoint down", next_attempt_at: "2025-12-01T10:05:00Z" });
    expect(failed).toMatch(/^Failed after 2 attempts: endpoint down; tried again /);
  });
});
