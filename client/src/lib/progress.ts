/** How far a running backup or restore is, from the parts' progress the workers record. */

import type { Backup, Restore } from "./backupApi";
import { formatBytes, formatDateTime } from "./format";

export interface ProgressSummary {
  /** 0 to 1, or null when nothing says how much is left. */
  value: number | null;
  /** In words: "database: 12/40 tables", "checking". */
  text: string;
}

type PartProgress = { [key: string]: unknown } | null;

function count(progress: PartProgress, key: string): number | null {
  const value = progress?.[key];
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

/** The share of one part done, by bytes when its total is known, else by tables or files. */
export function partFraction(progress: PartProgress): number | null {
  for (const unit of ["bytes", "tables", "files"]) {
    const done = count(progress, `${unit}_done`);
    const total = count(progress, `${unit}_total`);
    if (done !== null && total !== null && total > 0) return Math.min(1, done / total);
  }
  return null;
}

/** One part's progress in a few words, as `backupctl` prints it: phase, then counts done of totals. */
export function describePartProgress(progress: PartProgress): string {
  if (!progress) return "waiting";
  const words: string[] = [];
  const phase = progress.phase;
  if (typeof phase === "string" && phase) words.push(phase);
  for (const unit of ["tables", "files"]) {
    const done = count(progress, `${unit}_done`);
    const total = count(progress, `${unit}_total`);
    if (done !== null && total !== null && total > 0) words.push(`${done}/${total} ${unit}`);
    else if (done !== null && done > 0) words.push(`${done} ${unit}`);
  }
  return words.join(", ") || "running";
}

/** A backup's progress: its completed parts, plus the share done of those running. */
export function backupProgress(backup: Backup): ProgressSummary {
  const total = backup.progress.parts_total || backup.parts.length || 1;
  if (backup.status === "pending") return { value: null, text: "waiting for a worker" };
  let done = backup.progress.parts_completed;
  let known = true;
  const words: string[] = [];
  for (const part of backup.parts) {
    if (part.status !== "running") continue;
    const fraction = partFraction(part.progress);
    if (fraction === null) known = false;
    else done += fraction;
    words.push(`${part.part}: ${describePartProgress(part.progress)}`);
  }
  if (words.length === 0) words.push(`${backup.progress.parts_completed} of ${total} parts done`);
  const anyProgress = done > 0 || known;
  return { value: anyProgress ? done / total : null, text: words.join("; ") };
}

/** A restore's progress over all its parts. */
export function restoreProgress(restore: Restore): ProgressSummary {
  if (restore.status === "completed") return { value: 1, text: "completed" };
  const parts = restore.parts;
  if (parts.length === 0) return { value: null, text: restore.status };
  let done = 0;
  let known = true;
  for (const part of parts) {
    if (part.status === "completed") done += 1;
    else {
      const fraction = part.status === "running" ? partFraction(part.progress) : 0;
      if (fraction === null) known = false;
      else done += fraction;
    }
  }
  return {
    value: known || done > 0 ? done / parts.length : null,
    text: parts
      .map((part) => `${part.part}: ${part.status === "running" ? describePartProgress(part.progress) : part.status}`)
      .join("; "),
  };
}

/** The backup's off-site copy in words; null when it has none (no object store was configured). */
export function describeOffsite(offsite: Backup["offsite"]): string | null {
  if (!offsite) return null;
  switch (offsite.status) {
    case "copied": {
      const local = offsite.local_removed_at
        ? `; the local copy was removed ${formatDateTime(offsite.local_removed_at)} (restores fetch it back)`
        : "";
      return `Copied ${formatDateTime(offsite.copied_at)} to ${offsite.location ?? "the object store"}${local}`;
    }
    case "failed":
      return `Failed after ${offsite.attempts} ${offsite.attempts === 1 ? "attempt" : "attempts"}: ${offsite.error ?? "no reason given"}; tried again ${formatDateTime(offsite.next_attempt_at)}`;
    case "pending":
      return offsite.bytes_copied > 0 ? `Copying: ${formatBytes(offsite.bytes_copied)} sent` : "Waiting to be copied";
    case "removed":
      return "Removed with the backup";
    case "locked":
      return `Deleted; Object Lock keeps the objects until ${formatDateTime(offsite.retain_until)}`;
  }
}
