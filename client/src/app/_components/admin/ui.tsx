"use client";

/** Small pieces every section uses: status badges, progress bars, error messages. */

import type { ReactNode } from "react";

import { describeError, type Backup, type BackupStatus, type RestoreStatus } from "../../../lib/backupApi";
import { formatDateTime, formatRelative } from "../../../lib/format";

import styles from "./admin.module.css";

type Tone = "ok" | "bad" | "busy" | "muted" | "warn";

const STATUS_TONE: Record<BackupStatus | RestoreStatus, Tone> = {
  pending: "busy",
  running: "busy",
  completed: "ok",
  failed: "bad",
  deleting: "muted",
  deleted: "muted",
};

/** A state in words, with a colour and a mark (✓, ✕, …) drawn by the stylesheet: colour alone would
 * leave out the colour-blind, and the mark stays out of the text that is read out or matched. */
export function Badge({ tone, children, title }: { tone: Tone; children: ReactNode; title?: string }) {
  return (
    <span className={`${styles.badge} ${styles[`tone_${tone}`]}`} title={title}>
      {children}
    </span>
  );
}

export function StatusBadge({ status }: { status: BackupStatus | RestoreStatus }) {
  return <Badge tone={STATUS_TONE[status]}>{status}</Badge>;
}

/** The latest verification of a backup; only a completed backup has one worth showing. */
export function VerificationBadge({ backup, checking }: { backup: Backup; checking?: boolean }) {
  if (checking) return <Badge tone="busy">verifying…</Badge>;
  if (backup.status !== "completed") return <span className={styles.muted}>—</span>;
  const { verification } = backup;
  const when = verification.checked_at
    ? `checked ${formatRelative(verification.checked_at)} (${formatDateTime(verification.checked_at)})`
    : undefined;
  if (verification.status === "verified") {
    return (
      <Badge tone="ok" title={when}>
        verified
      </Badge>
    );
  }
  if (verification.status === "failed") {
    return (
      <Badge tone="bad" title={[verification.error, when].filter(Boolean).join(" — ")}>
        verification failed
      </Badge>
    );
  }
  return (
    <Badge tone="muted" title="Verification runs after each backup and on the restore-drill schedule">
      not yet verified
    </Badge>
  );
}

export interface ProgressBarProps {
  /** 0 to 1, or null when the share done is unknown (the bar then only says that work goes on). */
  value: number | null;
  label: string;
  /** What the bar stands for, in words (read out instead of a bare percentage). */
  valueText?: string;
}

export function ProgressBar({ value, label, valueText }: ProgressBarProps) {
  const percent = value === null ? null : Math.round(Math.min(1, Math.max(0, value)) * 100);
  return (
    <div
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={percent ?? undefined}
      aria-valuetext={valueText ?? (percent === null ? "in progress" : `${percent}%`)}
      className={`${styles.progress} ${percent === null ? styles.progressIndeterminate : ""}`}
    >
      <div className={styles.progressFill} style={percent === null ? undefined : { width: `${percent}%` }} />
    </div>
  );
}

/** An error in words, announced when it appears; never a blank page. */
export function ErrorMessage({ error, title, action }: { error: unknown; title?: string; action?: ReactNode }) {
  if (!error) return null;
  return (
    <div role="alert" className={styles.error}>
      {title ? <strong>{title} </strong> : null}
      <span>{describeError(error)}</span>
      {action ? <span className={styles.errorAction}>{action}</span> : null}
    </div>
  );
}

/** The message under a form field that the gateway or the page found wrong. */
export function FieldError({ id, message }: { id: string; message: string | undefined }) {
  if (!message) return null;
  return (
    <p id={id} className={styles.fieldError}>
      {message}
    </p>
  );
}

export function Loading({ children = "Loading…" }: { children?: ReactNode }) {
  return (
    <p role="status" className={styles.loading}>
      <span aria-hidden="true" className={styles.spinner} />
      {children}
    </p>
  );
}
