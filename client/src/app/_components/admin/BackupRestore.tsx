"use client";

/**
 * The restore dialog: what to restore (parts, tables, paths), where (in place after a safety backup,
 * another database, another directory), a confirmation by typing the backup's id, and then the
 * restore followed to its end.
 */

import { useEffect, useId, useRef, useState, type FormEvent } from "react";

import {
  ApiError,
  PARTS_OF_TYPE,
  isAbort,
  isBackupActive,
  watchBackup,
  watchRestore,
  type Backup,
  type BackupDetail,
  type BackupPartName,
  type Restore,
  type RestoreRequest,
} from "../../../lib/backupApi";
import { useBackupApi } from "../../../lib/BackupApiProvider";
import { capitalize, formatBytes, formatDateTime, shortId } from "../../../lib/format";
import { backupProgress, describePartProgress, restoreProgress } from "../../../lib/progress";

import styles from "./admin.module.css";
import { Dialog } from "./Dialog";
import { ErrorMessage, FieldError, ProgressBar, StatusBadge } from "./ui";

type TargetKind = "in_place" | "database" | "directory";

/** The database names the gateway accepts (also stated in the OpenAPI document). */
const DATABASE_NAME = /^[A-Za-z0-9_$-]{1,64}$/;

export interface BackupRestoreProps {
  backup: Backup;
  onClose: () => void;
  /** Called once the restore has ended, completed or failed. */
  onFinished?: (restore: Restore) => void;
}

/** The lines of a textarea, trimmed, without blanks or repeats: "orders\nusers" → ["orders", "users"]. */
function lines(text: string): string[] {
  return [
    ...new Set(
      text
        .split(/[\n,]/)
        .map((line) => line.trim())
        .filter(Boolean),
    ),
  ];
}

export function BackupRestore({ backup, onClose, onFinished }: BackupRestoreProps) {
  const [restore, setRestore] = useState<Restore | null>(null);
  return (
    <Dialog
      title={restore ? "Restoring backup" : "Restore backup"}
      size="large"
      onClose={onClose}
      description={
        <p>
          {capitalize(backup.type)} backup <code>{shortId(backup.id)}</code>
          {backup.description ? <> “{backup.description}”</> : null} of{" "}
          {formatDateTime(backup.completed_at ?? backup.created_at)}, {formatBytes(backup.size_bytes)}.
        </p>
      }
    >
      {restore ? (
        <RestoreProgress initial={restore} onClose={onClose} onFinished={onFinished} />
      ) : (
        <RestoreForm backup={backup} onStarted={setRestore} onCancel={onClose} />
      )}
    </Dialog>
  );
}

function RestoreForm({
  backup,
  onStarted,
  onCancel,
}: {
  backup: Backup;
  onStarted: (restore: Restore) => void;
  onCancel: () => void;
}) {
  const api = useBackupApi();
  const available: readonly BackupPartName[] =
    backup.parts.length > 0 ? backup.parts.map((part) => part.part) : PARTS_OF_TYPE[backup.type];
  const [parts, setParts] = useState<ReadonlySet<BackupPartName>>(new Set(available));
  const [target, setTarget] = useState<TargetKind>("in_place");
  const [database, setDatabase] = useState("");
  const [directory, setDirectory] = useState("");
  const [replace, setReplace] = useState(false);
  const [tables, setTables] = useState("");
  const [paths, setPaths] = useState("");
  const [safetyBackup, setSafetyBackup] = useState(true);
  const [confirm, setConfirm] = useState("");
  const [busy, setBusy] = useState(false);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [failure, setFailure] = useState<unknown>(null);
  const id = useId();

  // Another database takes the database part only, another directory the files part only (the API's rule).
  const chosen: BackupPartName[] =
    target === "database" ? ["database"] : target === "directory" ? ["files"] : available.filter((p) => parts.has(p));
  const withDatabase = chosen.includes("database");
  const withFiles = chosen.includes("files");
  // The gateway compares the confirmation with the id trimmed and in lower case.
  const confirmed = confirm.trim().toLowerCase() === backup.id.toLowerCase();

  function request(): RestoreRequest {
    const body: RestoreRequest = { confirm: confirm.trim() };
    if (target === "in_place") {
      if (chosen.length < available.length) body.parts = chosen;
      body.safety_backup = safetyBackup;
    } else if (target === "database") {
      body.parts = ["database"];
      body.target = { database: database.trim(), replace };
    } else {
      body.parts = ["files"];
      body.target = { directory: directory.trim(), replace };
    }
    if (withDatabase && lines(tables).length > 0) body.tables = lines(tables);
    if (withFiles && lines(paths).length > 0) body.paths = lines(paths);
    return body;
  }

  /** What the page can tell is wrong before asking the gateway. */
  function problems(): Record<string, string> {
    const found: Record<string, string> = {};
    if (chosen.length === 0) found.parts = "Choose at least one part to restore.";
    if (target === "database" && !DATABASE_NAME.test(database.trim())) {
      found.database = "Name the database: 1 to 64 letters, digits, “_”, “$” or “-”.";
    }
    if (target === "directory" && !directory.trim().startsWith("/")) {
      found.directory = "Give an absolute path (starting with “/”) inside the gateway's restore directory.";
    }
    return found;
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!confirmed || busy) return;
    const found = problems();
    setErrors(found);
    setFailure(null);
    if (Object.keys(found).length > 0) return;
    setBusy(true);
    try {
      onStarted(await api.restoreBackup(backup.id, request()));
    } catch (error) {
      setBusy(false);
      const placed = placeError(error, target);
      setErrors(placed);
      if (Object.keys(placed).length === 0) setFailure(error);
    }
  }

  const field = (name: string) => ({
    "aria-invalid": errors[name] ? true : undefined,
    "aria-describedby": `${id}-${name}-error ${id}-${name}-hint`,
  });

  return (
    <form onSubmit={(event) => void submit(event)} className={styles.restoreForm} noValidate>
      <fieldset className={styles.fieldset}>
        <legend>Restore into</legend>
        <label className={styles.choice}>
          <input type="radio" name="target" checked={target === "in_place"} onChange={() => setTarget("in_place")} />
          <span>
            <strong>In place</strong>
            <span className={styles.hint}> — replaces the live database and file trees.</span>
          </span>
        </label>
        <label className={styles.choice}>
          <input
            type="radio"
            name="target"
            checked={target === "database"}
            disabled={!available.includes("database")}
            onChange={() => setTarget("database")}
          />
          <span>
            <strong>Another database</strong>
            <span className={styles.hint}> — the database part, into a database on the source server.</span>
          </span>
        </label>
        <label className={styles.choice}>
          <input
            type="radio"
            name="target"
            checked={target === "directory"}
            disabled={!available.includes("files")}
            onChange={() => setTarget("directory")}
          />
          <span>
            <strong>Another directory</strong>
            <span className={styles.hint}> — the file trees, below the gateway's restore directory.</span>
          </span>
        </label>
      </fieldset>

      {target === "in_place" ? (
        <>
          {available.length > 1 ? (
            <fieldset className={styles.fieldset} aria-describedby={`${id}-parts-error`}>
              <legend>Parts</legend>
              {available.map((part) => (
                <label key={part} className={styles.choice}>
                  <input
                    type="checkbox"
                    checked={parts.has(part)}
                    onChange={(e) => {
                      const next = new Set(parts);
                      if (e.target.checked) next.add(part);
                      else next.delete(part);
                      setParts(next);
                    }}
                  />
                  <span>{part === "database" ? "Database" : "Files (uploads, configs, logs)"}</span>
                </label>
              ))}
              <FieldError id={`${id}-parts-error`} message={errors.parts} />
            </fieldset>
          ) : null}
          <label className={styles.checkboxField}>
            <input
              type="checkbox"
              checked={safetyBackup}
              onChange={(e) => setSafetyBackup(e.target.checked)}
              aria-describedby={`${id}-safety-hint`}
            />
            <span>Take a safety backup first</span>
          </label>
          <p id={`${id}-safety-hint`} className={styles.hint}>
            {safetyBackup
              ? "What will be replaced is backed up first; restoring that backup undoes this restore. If it fails, nothing is touched."
              : "Without a safety backup, what this restore replaces cannot be brought back."}
          </p>
        </>
      ) : null}

      {target === "database" ? (
        <div className={styles.field}>
          <label htmlFor={`${id}-database`}>Database name</label>
          <input
            id={`${id}-database`}
            value={database}
            onChange={(e) => setDatabase(e.target.value)}
            autoComplete="off"
            spellCheck={false}
            placeholder="app_restored"
            {...field("database")}
          />
          <p id={`${id}-database-hint`} className={styles.hint}>
            Created if missing. It must be empty unless “Replace what is there” is ticked.
          </p>
          <FieldError id={`${id}-database-error`} message={errors.database} />
        </div>
      ) : null}

      {target === "directory" ? (
        <div className={styles.field}>
          <label htmlFor={`${id}-directory`}>Directory</label>
          <input
            id={`${id}-directory`}
            value={directory}
            onChange={(e) => setDirectory(e.target.value)}
            autoComplete="off"
            spellCheck={false}
            placeholder="/var/restores/2025-12-02"
            {...field("directory")}
          />
          <p id={`${id}-directory-hint`} className={styles.hint}>
            An absolute path below the gateway&apos;s restore directory (BACKUP_RESTORE_DIR), where uploads/, configs/
            and logs/ are rebuilt. It must be empty unless “Replace what is there” is ticked.
          </p>
          <FieldError id={`${id}-directory-error`} message={errors.directory} />
        </div>
      ) : null}

      {target !== "in_place" ? (
        <label className={styles.checkboxField}>
          <input type="checkbox" checked={replace} onChange={(e) => setReplace(e.target.checked)} />
          <span>Replace what is there</span>
        </label>
      ) : null}

      <div className={styles.formRow}>
        {withDatabase ? (
          <div className={`${styles.field} ${styles.grow}`}>
            <label htmlFor={`${id}-tables`}>Tables (optional)</label>
            <textarea
              id={`${id}-tables`}
              rows={3}
              value={tables}
              onChange={(e) => setTables(e.target.value)}
              spellCheck={false}
              placeholder={"orders\ncustomers"}
              {...field("tables")}
            />
            <p id={`${id}-tables-hint`} className={styles.hint}>
              One per line; none restores every table.
            </p>
            <FieldError id={`${id}-tables-error`} message={errors.tables} />
          </div>
        ) : null}
        {withFiles ? (
          <div className={`${styles.field} ${styles.grow}`}>
            <label htmlFor={`${id}-paths`}>Paths (optional)</label>
            <textarea
              id={`${id}-paths`}
              rows={3}
              value={paths}
              onChange={(e) => setPaths(e.target.value)}
              spellCheck={false}
              placeholder={"configs\nuploads/2025"}
              {...field("paths")}
            />
            <p id={`${id}-paths-hint`} className={styles.hint}>
              Tree-relative prefixes, one per line; none restores every file.
            </p>
            <FieldError id={`${id}-paths-error`} message={errors.paths} />
          </div>
        ) : null}
      </div>

      <div className={`${styles.field} ${styles.confirmField}`}>
        <label htmlFor={`${id}-confirm`}>Type the backup id to confirm</label>
        <p id={`${id}-confirm-hint`} className={styles.hint}>
          The id is <code className={styles.selectable}>{backup.id}</code>
        </p>
        <input
          id={`${id}-confirm`}
          value={confirm}
          onChange={(e) => setConfirm(e.target.value)}
          autoComplete="off"
          spellCheck={false}
          className={styles.mono}
          {...field("confirm")}
        />
        <FieldError id={`${id}-confirm-error`} message={errors.confirm} />
      </div>

      {failure ? <ErrorMessage title="The restore was not started." error={failure} /> : null}
      {Object.keys(errors).length > 0 && !failure ? (
        <p role="alert" className={styles.visuallyHidden}>
          The restore was not started: {Object.values(errors).join(" ")}
        </p>
      ) : null}

      <div className={styles.formActions}>
        <button
          type="submit"
          className={`${styles.buttonPrimary} ${styles.buttonDangerSolid}`}
          disabled={!confirmed || busy}
        >
          {busy ? "Starting…" : "Restore"}
        </button>
        <button type="button" className={styles.buttonSecondary} onClick={onCancel}>
          Cancel
        </button>
        {!confirmed ? (
          <span className={styles.hint}>“Restore” is enabled once the id is typed.</span>
        ) : target === "in_place" ? (
          <span className={styles.warningText}>This replaces live data.</span>
        ) : null}
      </div>
    </form>
  );
}

/**
 * The gateway's refusal, put next to the field it concerns: its per-field details first, then the
 * codes and sentences that name a field (an unknown table, a target that is not empty or not allowed).
 */
function placeError(error: unknown, target: TargetKind): Record<string, string> {
  if (!(error instanceof ApiError) || error.status >= 500 || error.isUnauthorized || error.isForbidden) return {};
  const placed: Record<string, string> = {};
  for (const [path, message] of Object.entries(error.fieldErrors())) {
    const [head = "", sub] = path.split(".");
    const name = head === "target" && sub ? sub : head;
    if (["database", "directory", "tables", "paths", "parts", "confirm"].includes(name)) placed[name] = message;
  }
  if (Object.keys(placed).length > 0) return placed;
  if (error.code === "unknown_tables") return { tables: error.message };
  if (error.code === "unknown_paths") return { paths: error.message };
  if (target !== "in_place" && (error.code === "target_not_empty" || /\b(directory|database)\b/.test(error.message))) {
    return { [target]: error.message };
  }
  return {};
}

function RestoreProgress({
  initial,
  onClose,
  onFinished,
}: {
  initial: Restore;
  onClose: () => void;
  onFinished?: (restore: Restore) => void;
}) {
  const api = useBackupApi();
  const [restore, setRestore] = useState(initial);
  const [error, setError] = useState<unknown>(null);
  const [retrying, setRetrying] = useState(false);
  const onFinishedRef = useRef(onFinished);
  onFinishedRef.current = onFinished;

  useEffect(() => {
    const controller = new AbortController();
    watchRestore(api, initial.id, {
      signal: controller.signal,
      onUpdate: (value) => {
        setRestore(value);
        setRetrying(false);
      },
      onRetry: () => setRetrying(true),
    })
      .then((done) => onFinishedRef.current?.(done))
      .catch((reason: unknown) => {
        if (!isAbort(reason)) setError(reason);
      });
    return () => controller.abort();
  }, [api, initial.id]);

  const progress = restoreProgress(restore);
  const finished = restore.status === "completed" || restore.status === "failed";
  const where =
    restore.target.kind === "in_place"
      ? "in place"
      : restore.target.kind === "database"
        ? `into database ${restore.target.database ?? ""}`
        : `into ${restore.target.directory ?? "another directory"}`;

  return (
    <div className={styles.restoreProgress}>
      <p>
        Restore <code>{shortId(restore.id)}</code> {where}: <StatusBadge status={restore.status} />
      </p>
      {restore.safety_backup_id && restore.status === "pending" ? (
        <SafetyBackupLine id={restore.safety_backup_id} />
      ) : null}
      <ProgressBar value={progress.value} label="Restore progress" valueText={progress.text} />
      <ul className={styles.partList}>
        {restore.parts.map((part) => (
          <li key={part.part}>
            <strong>{capitalize(part.part)}</strong>: <StatusBadge status={part.status} />{" "}
            {part.status === "running" ? <span>{describePartProgress(part.progress)}</span> : null}
            {part.error ? <p className={styles.rowError}>{part.error}</p> : null}
          </li>
        ))}
      </ul>
      <div role="status" aria-live="polite">
        {restore.status === "completed" ? (
          <p className={styles.success}>
            The restore completed {where} at {formatDateTime(restore.completed_at)}.
          </p>
        ) : null}
        {retrying ? <p className={styles.hint}>The gateway does not answer; still trying…</p> : null}
      </div>
      {restore.status === "failed" ? (
        <ErrorMessage title="The restore failed." error={new Error(restore.error ?? "no reason was recorded")} />
      ) : null}
      {error ? <ErrorMessage title="Its progress can no longer be followed." error={error} /> : null}
      {!finished ? (
        <p className={styles.hint}>Closing this dialog does not stop the restore; it goes on in the services.</p>
      ) : null}
      <div className={styles.formActions}>
        <button type="button" className={styles.buttonPrimary} onClick={onClose}>
          Close
        </button>
      </div>
    </div>
  );
}

/** The in-place restore's safety backup, which it waits for. */
function SafetyBackupLine({ id }: { id: string }) {
  const api = useBackupApi();
  const [backup, setBackup] = useState<BackupDetail | null>(null);
  useEffect(() => {
    const controller = new AbortController();
    watchBackup(api, id, { signal: controller.signal, onUpdate: setBackup }).catch(() => {
      // The restore's own status says whether the safety backup failed; this line is a courtesy.
    });
    return () => controller.abort();
  }, [api, id]);
  const progress = backup && isBackupActive(backup) ? backupProgress(backup) : null;
  return (
    <p className={styles.hint}>
      First a safety backup of what will be replaced: <code>{shortId(id)}</code>{" "}
      {backup ? <StatusBadge status={backup.status} /> : null} {progress ? progress.text : null}
    </p>
  );
}
