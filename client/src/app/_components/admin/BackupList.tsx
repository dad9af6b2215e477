"use client";

/**
 * The backups: a filtered, paged table that follows running backups by itself, the form that starts
 * one, and each backup's actions (download, restore, verify, delete).
 */

import { Fragment, useCallback, useEffect, useId, useMemo, useRef, useState, type FormEvent } from "react";

import {
  ApiError,
  BACKUP_STATUSES,
  BACKUP_TYPES,
  VERIFICATION_STATUSES,
  downloadFileName,
  isAbort,
  isBackupActive,
  watchVerification,
  type Backup,
  type BackupApi,
  type BackupPage,
  type BackupStatus,
  type BackupType,
  type ListBackupsQuery,
  type VerificationStatus,
} from "../../../lib/backupApi";
import { useBackupApi } from "../../../lib/BackupApiProvider";
import {
  capitalize,
  formatBytes,
  formatDateTime,
  formatRelative,
  hoursSince,
  humanize,
  shortId,
} from "../../../lib/format";
import { backupProgress, describeOffsite, describePartProgress } from "../../../lib/progress";
import { useLoad } from "../../../lib/useLoad";

import styles from "./admin.module.css";
import { BackupRestore } from "./BackupRestore";
import { Dialog } from "./Dialog";
import { ErrorMessage, FieldError, Loading, ProgressBar, StatusBadge, VerificationBadge } from "./ui";

/** How often the table is read again while a backup on it is pending, running or being deleted. */
export const LIST_POLL_MS = 2000;
/** …and, more slowly, while a backup that just completed awaits its first verification (it follows
 * every backup by itself), so that its badge turns to verified without a reload. */
export const VERIFICATION_POLL_MS = 5000;
const AWAIT_VERIFICATION_HOURS = 0.5;
const PAGE_SIZES = [10, 25, 50, 100] as const;

/** "Not deleted" is the default: a deleted backup stays in the catalog for the audit trail only. */
type StatusFilter = "not-deleted" | "any" | BackupStatus;
const NOT_DELETED = BACKUP_STATUSES.filter((status) => status !== "deleted");

interface Filters {
  type: BackupType | "";
  status: StatusFilter;
  verification: VerificationStatus | "";
}

const NO_FILTERS: Filters = { type: "", status: "not-deleted", verification: "" };

function queryOf(filters: Filters, limit: number, offset: number): ListBackupsQuery {
  const status =
    filters.status === "any" ? undefined : filters.status === "not-deleted" ? [...NOT_DELETED] : [filters.status];
  return {
    type: filters.type ? [filters.type] : undefined,
    status,
    verification: filters.verification ? [filters.verification] : undefined,
    limit,
    offset,
  };
}

function isUnfiltered(filters: Filters): boolean {
  return filters.type === "" && filters.status === "not-deleted" && filters.verification === "";
}

function shownBy(filters: Filters, backup: Backup): boolean {
  if (filters.type && filters.type !== backup.type) return false;
  if (filters.status === "not-deleted") return backup.status !== "deleted";
  if (filters.status !== "any" && filters.status !== backup.status) return false;
  return !filters.verification || filters.verification === backup.verification.status;
}

/** A random Idempotency-Key: a retried "Start backup" (a double click, a lost answer) makes one backup.
 * getRandomValues rather than randomUUID, which browsers offer on HTTPS and localhost only. */
function newIdempotencyKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** What started a backup, in words: its trigger ("api", "schedule", "pre-restore") and who or what. */
export function describeTrigger(backup: Backup): string {
  switch (backup.trigger) {
    case "api":
      return `by hand (${backup.requested_by})`;
    case "schedule":
      return backup.schedule ? `scheduled: ${backup.schedule}` : "scheduled";
    case "pre-restore":
      return "safety backup before a restore";
    default:
      return humanize(backup.trigger);
  }
}

function label(backup: Backup): string {
  return backup.description || `${backup.type} backup ${shortId(backup.id)}`;
}

export interface BackupListProps {
  /** Called when something the statistics count changed: a backup finished, failed, was deleted or verified. */
  onChange?: () => void;
}

export function BackupList({ onChange }: BackupListProps) {
  const api = useBackupApi();
  const [filters, setFilters] = useState<Filters>(NO_FILTERS);
  const [pageSize, setPageSize] = useState<number>(25);
  const [offset, setOffset] = useState(0);
  const query = useMemo(() => queryOf(filters, pageSize, offset), [filters, pageSize, offset]);
  const list = useLoad((signal) => api.listBackups(query, signal), JSON.stringify(query));
  const { data: page, reload, setData: setPage } = list;

  const [notice, setNotice] = useState("");
  const [actionError, setActionError] = useState<{ title: string; error: unknown } | null>(null);
  const [createOpen, setCreateOpen] = useState(false);
  const [expanded, setExpanded] = useState<ReadonlySet<string>>(new Set());
  const [verifying, setVerifying] = useState<ReadonlySet<string>>(new Set());
  const [downloads, setDownloads] = useState<Readonly<Record<string, string>>>({});
  const [toDelete, setToDelete] = useState<Backup | null>(null);
  const [toRestore, setToRestore] = useState<Backup | null>(null);
  const createButtonRef = useRef<HTMLButtonElement>(null);
  const headingId = useId();

  // Watches started here (verifications, new backups) end with the component.
  const watches = useRef(new Set<AbortController>());
  useEffect(() => {
    const running = watches.current;
    return () => running.forEach((controller) => controller.abort());
  }, []);
  const startWatch = useCallback(() => {
    const controller = new AbortController();
    watches.current.add(controller);
    return { signal: controller.signal, done: () => watches.current.delete(controller) };
  }, []);

  const onChangeRef = useRef(onChange);
  onChangeRef.current = onChange;

  // Rows that may still change are read again until none is left: no reload needed.
  const anyActive = page?.backups.some(isBackupActive) ?? false;
  const awaitingVerification =
    page?.backups.some(
      (backup) =>
        backup.status === "completed" &&
        backup.verification.status === "pending" &&
        hoursSince(backup.completed_at) < AWAIT_VERIFICATION_HOURS,
    ) ?? false;
  useEffect(() => {
    if (!anyActive && !awaitingVerification) return;
    const timer = setTimeout(() => reload(true), anyActive ? LIST_POLL_MS : VERIFICATION_POLL_MS);
    return () => clearTimeout(timer);
  }, [anyActive, awaitingVerification, page, reload]);

  // A row that was pending or running and no longer is: say how it ended.
  const lastStatus = useRef(new Map<string, BackupStatus>());
  useEffect(() => {
    if (!page) return;
    let changed = false;
    for (const backup of page.backups) {
      const before = lastStatus.current.get(backup.id);
      if (before && before !== backup.status && !isBackupActive(backup)) {
        changed = true;
        setNotice(
          backup.status === "failed"
            ? `Backup ${shortId(backup.id)} (${label(backup)}) failed${backup.error ? `: ${backup.error}` : "."}`
            : `Backup ${shortId(backup.id)} (${label(backup)}) is ${backup.status}.`,
        );
      }
      lastStatus.current.set(backup.id, backup.status);
    }
    if (changed) onChangeRef.current?.();
  }, [page]);

  const replaceRow = useCallback(
    (updated: Backup) =>
      setPage((current) =>
        current
          ? {
              ...current,
              backups: current.backups.map((row) => (row.id === updated.id ? { ...row, ...updated } : row)),
            }
          : current,
      ),
    [setPage],
  );

  function changeFilters(next: Partial<Filters>) {
    setFilters((current) => ({ ...current, ...next }));
    setOffset(0);
  }

  function onCreated(backup: Backup) {
    setCreateOpen(false);
    setNotice(`Backup ${shortId(backup.id)} (${label(backup)}) requested; this table follows it until it ends.`);
    lastStatus.current.set(backup.id, backup.status);
    // The new row shows at once on the first page, even where the filters would have hidden it.
    const visible = shownBy(filters, backup) && offset === 0;
    if (visible) {
      setPage((current: BackupPage | null) =>
        current
          ? {
              ...current,
              backups: [backup, ...current.backups.filter((row) => row.id !== backup.id)].slice(0, current.limit),
              total: current.total + 1,
            }
          : current,
      );
      reload(true);
    } else {
      setFilters(NO_FILTERS);
      setOffset(0);
    }
    onChangeRef.current?.();
    // Focus goes back to the button the form came from (it is unmounted with the form).
    requestAnimationFrame(() => createButtonRef.current?.focus());
  }

  async function verify(backup: Backup) {
    setActionError(null);
    const watch = startWatch();
    setVerifying((ids) => new Set(ids).add(backup.id));
    try {
      await api.verifyBackup(backup.id);
      setNotice(`Verification of backup ${shortId(backup.id)} requested.`);
      const result = await watchVerification(api, backup.id, backup.verification.checked_at, {
        signal: watch.signal,
      });
      replaceRow(result);
      const { verification } = result;
      setNotice(
        verification.status === "verified"
          ? `Backup ${shortId(backup.id)} (${label(backup)}) is verified: every check passed.`
          : `Backup ${shortId(backup.id)} (${label(backup)}) failed verification: ${verification.error ?? "see its details"}.`,
      );
      onChangeRef.current?.();
    } catch (error) {
      if (!isAbort(error)) setActionError({ title: `Could not verify backup ${shortId(backup.id)}:`, error });
    } finally {
      watch.done();
      setVerifying((ids) => {
        const next = new Set(ids);
        next.delete(backup.id);
        return next;
      });
    }
  }

  async function download(backup: Backup) {
    setActionError(null);
    setDownloads((current) => ({ ...current, [backup.id]: "starting…" }));
    try {
      const response = await api.downloadBackup(backup.id);
      const blob = await readWithProgress(response, (text) =>
        setDownloads((current) => ({ ...current, [backup.id]: text })),
      );
      saveBlob(blob, downloadFileName(response, backup.id));
      setNotice(`Backup ${shortId(backup.id)} downloaded (${formatBytes(blob.size)}).`);
    } catch (error) {
      setActionError({ title: `Could not download backup ${shortId(backup.id)}:`, error });
    } finally {
      setDownloads((current) => {
        const next = { ...current };
        delete next[backup.id];
        return next;
      });
    }
  }

  function onDeleted(backup: Backup) {
    setToDelete(null);
    replaceRow(backup);
    lastStatus.current.set(backup.id, backup.status);
    setNotice(`Backup ${shortId(backup.id)} (${label(backup)}) is being deleted.`);
    reload(true);
  }

  function toggleDetails(id: string) {
    setExpanded((current) => {
      const next = new Set(current);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });
  }

  const total = page?.total ?? 0;
  const from = total === 0 ? 0 : offset + 1;
  const to = Math.min(offset + (page?.backups.length ?? 0), total);

  return (
    <section aria-labelledby={headingId} className={styles.section} id="backups">
      <div className={styles.sectionHeader}>
        <h2 id={headingId} className={styles.sectionTitle}>
          Backups
        </h2>
        <div className={styles.sectionActions}>
          <button type="button" className={styles.buttonSecondary} onClick={() => reload()}>
            Refresh
          </button>
          <button
            ref={createButtonRef}
            type="button"
            className={styles.buttonPrimary}
            aria-expanded={createOpen}
            aria-controls={createOpen ? "create-backup-form" : undefined}
            onClick={() => setCreateOpen((open) => !open)}
          >
            Create backup
          </button>
        </div>
      </div>

      {createOpen ? <CreateBackupForm api={api} onCreated={onCreated} onCancel={() => setCreateOpen(false)} /> : null}

      <div className={styles.filters} role="group" aria-label="Filter backups">
        <label className={styles.filter}>
          <span>Filter by type</span>
          <select value={filters.type} onChange={(e) => changeFilters({ type: e.target.value as Filters["type"] })}>
            <option value="">All types</option>
            {BACKUP_TYPES.map((type) => (
              <option key={type} value={type}>
                {capitalize(type)}
              </option>
            ))}
          </select>
        </label>
        <label className={styles.filter}>
          <span>Filter by status</span>
          <select value={filters.status} onChange={(e) => changeFilters({ status: e.target.value as StatusFilter })}>
            <option value="not-deleted">All but deleted</option>
            <option value="any">All, deleted too</option>
            {BACKUP_STATUSES.map((status) => (
              <option key={status} value={status}>
                {capitalize(status)}
              </option>
            ))}
          </select>
        </label>
        <label className={styles.filter}>
          <span>Filter by verification</span>
          <select
            value={filters.verification}
            onChange={(e) => changeFilters({ verification: e.target.value as Filters["verification"] })}
          >
            <option value="">Any verification</option>
            {VERIFICATION_STATUSES.map((status) => (
              <option key={status} value={status}>
                {status === "pending" ? "Not yet verified" : capitalize(status)}
              </option>
            ))}
          </select>
        </label>
      </div>

      <p role="status" aria-live="polite" className={styles.notice}>
        {notice}
      </p>
      {actionError ? (
        <ErrorMessage
          title={actionError.title}
          error={actionError.error}
          action={
            <button type="button" className={styles.linkButton} onClick={() => setActionError(null)}>
              Dismiss
            </button>
          }
        />
      ) : null}

      {list.error && !page ? (
        <ErrorMessage
          title="The backups could not be loaded."
          error={list.error}
          action={
            <button type="button" className={styles.linkButton} onClick={() => reload()}>
              Try again
            </button>
          }
        />
      ) : null}
      {list.error && page ? (
        <ErrorMessage title="The table could not be refreshed; it shows what was read last." error={list.error} />
      ) : null}
      {list.loading && !page ? <Loading>Loading backups…</Loading> : null}

      {page ? (
        <div className={styles.tableWrap}>
          <table
            className={`${styles.table} ${styles.responsiveTable}`}
            aria-labelledby={headingId}
            aria-busy={list.loading}
          >
            <thead>
              <tr>
                <th scope="col">
                  <span className={styles.visuallyHidden}>Details</span>
                </th>
                <th scope="col">Type</th>
                <th scope="col">Status</th>
                <th scope="col">Verification</th>
                <th scope="col">Description</th>
                <th scope="col" className={styles.numeric}>
                  Size
                </th>
                <th scope="col">Created, by</th>
                <th scope="col">
                  <span className={styles.visuallyHidden}>Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {page.backups.length === 0 ? (
                <tr>
                  <td colSpan={8} className={styles.empty}>
                    {isUnfiltered(filters)
                      ? "No backups yet. Start one with “Create backup”, or wait for the schedule."
                      : "No backup matches these filters."}
                  </td>
                </tr>
              ) : null}
              {page.backups.map((backup) => (
                <Fragment key={backup.id}>
                  <BackupRow
                    backup={backup}
                    expanded={expanded.has(backup.id)}
                    verifying={verifying.has(backup.id)}
                    downloadProgress={downloads[backup.id]}
                    onToggle={() => toggleDetails(backup.id)}
                    onDownload={() => void download(backup)}
                    onRestore={() => setToRestore(backup)}
                    onDelete={() => setToDelete(backup)}
                    onVerify={() => void verify(backup)}
                  />
                  {expanded.has(backup.id) ? <BackupDetailsRow backup={backup} /> : null}
                </Fragment>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}

      {page ? (
        <nav className={styles.pagination} aria-label="Backup pages">
          <span aria-live="polite">{total === 0 ? "No backups" : `Showing ${from}–${to} of ${total}`}</span>
          <label className={styles.filter}>
            <span>Rows per page</span>
            <select
              value={pageSize}
              onChange={(e) => {
                setPageSize(Number(e.target.value));
                setOffset(0);
              }}
            >
              {PAGE_SIZES.map((size) => (
                <option key={size} value={size}>
                  {size}
                </option>
              ))}
            </select>
          </label>
          <button
            type="button"
            className={styles.buttonSecondary}
            disabled={offset === 0}
            onClick={() => setOffset(Math.max(0, offset - pageSize))}
          >
            Previous page
          </button>
          <button
            type="button"
            className={styles.buttonSecondary}
            disabled={offset + pageSize >= total}
            onClick={() => setOffset(offset + pageSize)}
          >
            Next page
          </button>
        </nav>
      ) : null}

      {toDelete ? (
        <DeleteBackupDialog api={api} backup={toDelete} onDeleted={onDeleted} onClose={() => setToDelete(null)} />
      ) : null}
      {toRestore ? (
        <BackupRestore
          backup={toRestore}
          onClose={() => setToRestore(null)}
          onFinished={() => {
            reload(true);
            onChangeRef.current?.();
          }}
        />
      ) : null}
    </section>
  );
}

interface BackupRowProps {
  backup: Backup;
  expanded: boolean;
  verifying: boolean;
  downloadProgress: string | undefined;
  onToggle: () => void;
  onDownload: () => void;
  onRestore: () => void;
  onDelete: () => void;
  onVerify: () => void;
}

function BackupRow(props: BackupRowProps) {
  const { backup, expanded, verifying, downloadProgress } = props;
  const describedBy = `backup-${backup.id}-label`;
  const completed = backup.status === "completed";
  // The gateway refuses to delete what is still being made or already going; say so before it must.
  const deletable = !isBackupActive(backup) && backup.status !== "deleted";
  const progress = isBackupActive(backup) && backup.status !== "deleting" ? backupProgress(backup) : null;
  return (
    <tr className={expanded ? styles.rowExpanded : undefined} data-backup-id={backup.id}>
      <td className={styles.expandCell}>
        <button
          type="button"
          className={styles.iconButton}
          aria-expanded={expanded}
          aria-controls={`backup-${backup.id}-details`}
          aria-describedby={describedBy}
          onClick={props.onToggle}
          title={expanded ? "Hide details" : "Show details"}
        >
          <span aria-hidden="true" className={expanded ? styles.chevronOpen : styles.chevron}>
            ›
          </span>
          <span className={styles.visuallyHidden}>Details</span>
        </button>
      </td>
      <td data-label="Type">
        {capitalize(backup.type)}
        {backup.archive ? <span className={styles.tag}>archive</span> : null}
      </td>
      <td data-label="Status">
        <StatusBadge status={backup.status} />
        {progress ? (
          <div className={styles.rowProgress}>
            <ProgressBar
              value={progress.value}
              label={`Progress of backup ${shortId(backup.id)}`}
              valueText={progress.text}
            />
            <span className={styles.small}>{progress.text}</span>
          </div>
        ) : null}
        {backup.status === "failed" && backup.error ? <p className={styles.rowError}>{backup.error}</p> : null}
      </td>
      <td data-label="Verification">
        <VerificationBadge backup={backup} checking={verifying} />
      </td>
      <td data-label="Description" className={styles.descriptionCell}>
        <span id={describedBy}>
          {backup.description || <span className={styles.muted}>No description</span>}
          <span className={styles.visuallyHidden}>
            {` (${backup.type} backup ${shortId(backup.id)}, ${formatDateTime(backup.created_at)})`}
          </span>
        </span>
        {backup.warning_count > 0 ? (
          <span className={styles.warningNote}>
            {backup.warning_count} {backup.warning_count === 1 ? "path" : "paths"} left out
          </span>
        ) : null}
      </td>
      <td data-label="Size" className={styles.numeric}>
        {completed || backup.size_bytes > 0 ? formatBytes(backup.size_bytes) : <span className={styles.muted}>—</span>}
      </td>
      <td data-label="Created, by">
        <time dateTime={backup.created_at} title={backup.created_at} className={styles.nowrap}>
          {formatDateTime(backup.created_at)}
        </time>
        <span className={styles.small}>{formatRelative(backup.created_at)}</span>
        {/* The trigger: what or who started it. */}
        <span className={styles.small} title={`Trigger: ${backup.trigger}; requested by ${backup.requested_by}`}>
          {describeTrigger(backup)}
        </span>
      </td>
      <td data-label="Actions" className={styles.actionsCell}>
        <div className={styles.rowActions}>
          <button
            type="button"
            className={styles.buttonSmall}
            disabled={!completed || downloadProgress !== undefined}
            aria-describedby={describedBy}
            onClick={props.onDownload}
          >
            Download
          </button>
          <button
            type="button"
            className={styles.buttonSmall}
            disabled={!completed}
            aria-describedby={describedBy}
            onClick={props.onRestore}
          >
            Restore
          </button>
          <button
            type="button"
            className={styles.buttonSmall}
            disabled={!completed || verifying}
            aria-describedby={describedBy}
            onClick={props.onVerify}
          >
            Verify
          </button>
          <button
            type="button"
            className={`${styles.buttonSmall} ${styles.buttonDanger}`}
            disabled={!deletable}
            aria-describedby={describedBy}
            onClick={props.onDelete}
          >
            Delete
          </button>
        </div>
        {downloadProgress !== undefined ? (
          <span className={styles.small} role="status">
            Downloading: {downloadProgress}
          </span>
        ) : null}
      </td>
    </tr>
  );
}

/** The backup's own page, folded under its row: parts, errors, verification checks, paths left out. */
function BackupDetailsRow({ backup }: { backup: Backup }) {
  const api = useBackupApi();
  // Read again whenever the row changed, so the details never lag behind the row above them.
  const detail = useLoad((signal) => api.getBackup(backup.id, signal), `${backup.id}@${backup.updated_at}`);
  const shown = detail.data;
  return (
    <tr className={styles.detailsRow} id={`backup-${backup.id}-details`}>
      <td colSpan={8}>
        {detail.error ? <ErrorMessage title="The details could not be loaded." error={detail.error} /> : null}
        {!shown && !detail.error ? <Loading>Loading details…</Loading> : null}
        {shown ? (
          <div className={styles.details}>
            <dl className={styles.facts}>
              <div>
                <dt>Id</dt>
                <dd>
                  <code>{shown.id}</code>
                </dd>
              </div>
              <div>
                <dt>Requested by</dt>
                <dd>{shown.requested_by}</dd>
              </div>
              <div>
                <dt>Started</dt>
                <dd>{formatDateTime(shown.started_at)}</dd>
              </div>
              <div>
                <dt>Completed</dt>
                <dd>{formatDateTime(shown.completed_at)}</dd>
              </div>
              {shown.parent_id ? (
                <div>
                  <dt>Builds on</dt>
                  <dd>
                    <code>{shown.parent_id}</code>
                  </dd>
                </div>
              ) : null}
              <div>
                <dt>Stored in</dt>
                <dd>
                  <code>{shown.storage_path || "—"}</code>
                </dd>
              </div>
              {shown.offsite ? (
                <div>
                  <dt>Off-site copy</dt>
                  <dd>{describeOffsite(shown.offsite)}</dd>
                </div>
              ) : null}
            </dl>
            <table className={styles.table}>
              <caption className={styles.caption}>Parts</caption>
              <thead>
                <tr>
                  <th scope="col">Part</th>
                  <th scope="col">Status</th>
                  <th scope="col" className={styles.numeric}>
                    Size
                  </th>
                  <th scope="col" className={styles.numeric}>
                    Items
                  </th>
                  <th scope="col">SHA-256</th>
                </tr>
              </thead>
              <tbody>
                {shown.parts.map((part) => (
                  <tr key={part.part}>
                    <th scope="row">{capitalize(part.part)}</th>
                    <td>
                      <StatusBadge status={part.status} />
                      {part.status === "running" ? (
                        <span className={styles.small}>{describePartProgress(part.progress)}</span>
                      ) : null}
                      {part.error ? <p className={styles.rowError}>{part.error}</p> : null}
                    </td>
                    <td className={styles.numeric}>{formatBytes(part.size_bytes)}</td>
                    <td className={styles.numeric}>{part.item_count.toLocaleString()}</td>
                    <td>
                      <code className={styles.hash}>{part.sha256 ?? "—"}</code>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            {(shown.verification.checks ?? []).length > 0 ? (
              <table className={styles.table}>
                <caption className={styles.caption}>
                  Verification checks ({formatDateTime(shown.verification.checked_at)})
                </caption>
                <thead>
                  <tr>
                    <th scope="col">Check</th>
                    <th scope="col">Result</th>
                    <th scope="col">Detail</th>
                  </tr>
                </thead>
                <tbody>
                  {(shown.verification.checks ?? []).map((check) => (
                    <tr key={check.name}>
                      <th scope="row">
                        <code>{check.name}</code>
                      </th>
                      <td>{check.ok ? "passed" : "failed"}</td>
                      <td>{check.detail}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
            {shown.warnings.length > 0 ? (
              <details className={styles.disclosure}>
                <summary>
                  {shown.warning_count} {shown.warning_count === 1 ? "path" : "paths"} left out of this backup
                </summary>
                <ul className={styles.warningList}>
                  {shown.warnings.map((warning) => (
                    <li key={`${warning.part}:${warning.path}`}>
                      <code>{warning.path}</code> — {warning.reason}
                    </li>
                  ))}
                </ul>
              </details>
            ) : null}
          </div>
        ) : null}
      </td>
    </tr>
  );
}

function CreateBackupForm({
  api,
  onCreated,
  onCancel,
}: {
  api: BackupApi;
  onCreated: (backup: Backup) => void;
  onCancel: () => void;
}) {
  const [type, setType] = useState<BackupType>("full");
  const [description, setDescription] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const idempotencyKey = useRef(newIdempotencyKey());
  const typeId = useId();
  const descriptionId = useId();
  const fieldErrors = error instanceof ApiError ? error.fieldErrors() : {};

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const backup = await api.createBackup({ type, description: description.trim() }, idempotencyKey.current);
      onCreated(backup);
    } catch (reason) {
      setError(reason);
      setBusy(false);
    }
  }

  return (
    <form
      id="create-backup-form"
      className={styles.panel}
      aria-label="Create backup"
      onSubmit={(event) => void submit(event)}
      onKeyDown={(event) => {
        if (event.key === "Escape") onCancel();
      }}
    >
      <div className={styles.formRow}>
        <div className={styles.field}>
          <label htmlFor={typeId}>Type</label>
          <select
            id={typeId}
            value={type}
            onChange={(e) => setType(e.target.value as BackupType)}
            aria-invalid={fieldErrors.type ? true : undefined}
            aria-describedby={`${typeId}-hint ${typeId}-error`}
          >
            {BACKUP_TYPES.map((option) => (
              <option key={option} value={option}>
                {option}
              </option>
            ))}
          </select>
          <p id={`${typeId}-hint`} className={styles.hint}>
            {TYPE_HINTS[type]}
          </p>
          <FieldError id={`${typeId}-error`} message={fieldErrors.type} />
        </div>
        <div className={`${styles.field} ${styles.grow}`}>
          <label htmlFor={descriptionId}>Description</label>
          <input
            id={descriptionId}
            value={description}
            maxLength={500}
            placeholder="Before the 3.2 upgrade"
            onChange={(e) => setDescription(e.target.value)}
            aria-invalid={fieldErrors.description ? true : undefined}
            aria-describedby={`${descriptionId}-error`}
          />
          <FieldError id={`${descriptionId}-error`} message={fieldErrors.description} />
        </div>
      </div>
      {error && Object.keys(fieldErrors).length === 0 ? (
        <ErrorMessage title="The backup was not started." error={error} />
      ) : null}
      <div className={styles.formActions}>
        <button type="submit" className={styles.buttonPrimary} disabled={busy}>
          {busy ? "Starting…" : "Start backup"}
        </button>
        <button type="button" className={styles.buttonSecondary} onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

const TYPE_HINTS: Record<BackupType, string> = {
  full: "The database and the uploads, configuration and log trees.",
  database: "The database alone.",
  files: "The uploads, configuration and log trees, complete.",
  incremental: "What changed in the trees since the last backup that has them.",
};

function DeleteBackupDialog({
  api,
  backup,
  onDeleted,
  onClose,
}: {
  api: BackupApi;
  backup: Backup;
  onDeleted: (backup: Backup) => void;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const cancelRef = useRef<HTMLButtonElement>(null);

  async function confirm() {
    setBusy(true);
    setError(null);
    try {
      onDeleted(await api.deleteBackup(backup.id));
    } catch (reason) {
      setError(reason);
      setBusy(false);
      // The Delete button may be disabled now (a 409 will not change on a retry): keep focus in the dialog.
      requestAnimationFrame(() => cancelRef.current?.focus());
    }
  }

  const conflict = error instanceof ApiError && error.status === 409;
  return (
    <Dialog
      title="Delete this backup?"
      onClose={busy ? undefined : onClose}
      initialFocusRef={cancelRef}
      description={
        <p>
          The {backup.type} backup <strong>{label(backup)}</strong> of {formatDateTime(backup.created_at)} (
          {formatBytes(backup.size_bytes)}) will be erased: its files, then its encryption key, so no copy of it can be
          read again. This cannot be undone.
        </p>
      }
    >
      {error ? (
        <ErrorMessage
          title={conflict ? "The gateway refused: it is still needed." : "It was not deleted."}
          error={error}
        />
      ) : null}
      <div className={styles.formActions}>
        <button
          type="button"
          className={`${styles.buttonPrimary} ${styles.buttonDangerSolid}`}
          disabled={busy || conflict}
          onClick={() => void confirm()}
        >
          {busy ? "Deleting…" : "Delete"}
        </button>
        <button ref={cancelRef} type="button" className={styles.buttonSecondary} onClick={onClose} disabled={busy}>
          Cancel
        </button>
      </div>
    </Dialog>
  );
}

/** The archive, read to its end with the share done reported as it arrives. */
async function readWithProgress(response: Response, onProgress: (text: string) => void): Promise<Blob> {
  const total = Number(response.headers.get("Content-Length")) || null;
  if (!response.body) return response.blob();
  const reader = response.body.getReader();
  const chunks: BlobPart[] = [];
  let received = 0;
  let shown = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.byteLength;
    // A message every 1% (or 4 MiB without a length) is enough to see it move without re-rendering per chunk.
    const step = total ? total / 100 : 4 * 1024 * 1024;
    if (received - shown >= step) {
      shown = received;
      onProgress(total ? `${Math.floor((received / total) * 100)}% of ${formatBytes(total)}` : formatBytes(received));
    }
  }
  if (total !== null && received !== total) {
    // The gateway cuts an archive short when it fails its integrity check as it streams.
    throw new Error(`The download stopped after ${formatBytes(received)} of ${formatBytes(total)}; nothing was saved.`);
  }
  return new Blob(chunks, { type: response.headers.get("Content-Type") ?? "application/zip" });
}

/** Hands the blob to the browser's download, as a link the token-less browser could not follow. */
function saveBlob(blob: Blob, fileName: string) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = fileName;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
  // Revoked later: some browsers start reading the blob only after the click handler returns.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
