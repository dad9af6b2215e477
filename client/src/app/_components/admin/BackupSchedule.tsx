"use client";

/**
 * The schedule (its entries, their cron expressions in words and next runs, each enabled or not) and
 * the retention policy, both edited in place.
 *
 * Each change is saved as it is made, on the revision it was made on (If-Match): a change someone
 * else saved meanwhile is never overwritten silently (412), and a refused value is shown next to its
 * field with the gateway's own words.
 */

import { useId, useRef, useState, type FormEvent } from "react";

import {
  ApiError,
  BACKUP_TYPES,
  type BackupType,
  type RetentionPolicy,
  type RetentionPreview,
  type ScheduleDocument,
  type ScheduleEntry,
  type SettingsDocument,
  type StoredDocument,
} from "../../../lib/backupApi";
import { useBackupApi } from "../../../lib/BackupApiProvider";
import { cronProblem, describeCron } from "../../../lib/cron";
import { formatDateTime, formatRelative, formatWeekdayTime, shortId } from "../../../lib/format";
import { useLoad } from "../../../lib/useLoad";

import styles from "./admin.module.css";
import { Dialog } from "./Dialog";
import { Badge, ErrorMessage, FieldError, Loading } from "./ui";

/** The entry name rule of the schedule document (also in the OpenAPI document). */
const ENTRY_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const NEXT_RUNS_SHOWN = 3;

type Schedule = StoredDocument<ScheduleDocument>;

export interface BackupScheduleProps {
  /** Called after the schedule or the retention policy was saved. */
  onChange?: () => void;
}

export function BackupSchedule({ onChange }: BackupScheduleProps) {
  const api = useBackupApi();
  const schedule = useLoad((signal) => api.getSchedule(signal), "schedule");
  const settings = useLoad((signal) => api.getSettings(signal), "settings");
  const [editing, setEditing] = useState<{ name: string | null } | null>(null);
  const [toRemove, setToRemove] = useState<ScheduleEntry | null>(null);
  const [busyEntry, setBusyEntry] = useState<string | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [notice, setNotice] = useState("");
  const addButtonRef = useRef<HTMLButtonElement>(null);
  const headingId = useId();
  const current = schedule.data;

  /**
   * Saves `change(document)` on the revision shown. On 412 the newer document is loaded (so a second
   * try applies the change to it) and the error is passed on for the form to show.
   */
  async function save(change: (document: ScheduleDocument) => ScheduleDocument): Promise<Schedule> {
    if (!current) throw new Error("The schedule is not loaded yet.");
    try {
      const stored = await api.putSchedule(change(current.document), current.revision);
      schedule.setData(stored);
      onChange?.();
      return stored;
    } catch (error) {
      if (error instanceof ApiError && error.status === 412) schedule.reload(true);
      throw error;
    }
  }

  async function toggle(entry: ScheduleEntry) {
    setBusyEntry(entry.name);
    setActionError(null);
    try {
      await save((document) => ({
        ...document,
        schedules: document.schedules.map((e) => (e.name === entry.name ? { ...e, enabled: !entry.enabled } : e)),
      }));
      setNotice(`Schedule “${entry.name}” ${entry.enabled ? "disabled" : "enabled"}.`);
    } catch (error) {
      setActionError(error);
    } finally {
      setBusyEntry(null);
    }
  }

  async function remove(entry: ScheduleEntry) {
    await save((document) => ({ ...document, schedules: document.schedules.filter((e) => e.name !== entry.name) }));
    setToRemove(null);
    setNotice(`Schedule “${entry.name}” removed.`);
    requestAnimationFrame(() => addButtonRef.current?.focus());
  }

  return (
    <section aria-labelledby={headingId} className={styles.section} id="schedule">
      <div className={styles.sectionHeader}>
        <h2 id={headingId} className={styles.sectionTitle}>
          Schedule
        </h2>
        <div className={styles.sectionActions}>
          <button
            ref={addButtonRef}
            type="button"
            className={styles.buttonPrimary}
            disabled={!current || editing !== null}
            onClick={() => setEditing({ name: null })}
          >
            Add schedule
          </button>
        </div>
      </div>

      {schedule.error && !current ? (
        <ErrorMessage
          title="The schedule could not be loaded."
          error={schedule.error}
          action={
            <button type="button" className={styles.linkButton} onClick={() => schedule.reload()}>
              Try again
            </button>
          }
        />
      ) : null}
      {!current && !schedule.error ? <Loading>Loading the schedule…</Loading> : null}

      <p role="status" aria-live="polite" className={styles.notice}>
        {notice}
      </p>
      {actionError ? <ErrorMessage title="The schedule was not changed." error={actionError} /> : null}

      {current && editing ? (
        <EntryForm
          key={editing.name ?? "new"}
          schedule={current}
          originalName={editing.name}
          save={save}
          onDone={(entry) => {
            setEditing(null);
            setNotice(`Schedule “${entry.name}” saved.`);
            requestAnimationFrame(() => addButtonRef.current?.focus());
          }}
          onCancel={() => setEditing(null)}
        />
      ) : null}

      {current ? (
        <>
          <TimezoneForm schedule={current} save={save} />
          <ScheduleTable
            schedule={current}
            busyEntry={busyEntry}
            onToggle={(entry) => void toggle(entry)}
            onEdit={(entry) => setEditing({ name: entry.name })}
            onRemove={setToRemove}
          />
          <p className={styles.small}>
            Revision {current.revision}, saved by {current.updated_by} {formatRelative(current.updated_at)} (
            {formatDateTime(current.updated_at)}).
          </p>
        </>
      ) : null}

      {toRemove ? (
        <RemoveDialog entry={toRemove} onRemove={() => remove(toRemove)} onClose={() => setToRemove(null)} />
      ) : null}

      <RetentionSection
        settings={settings.data}
        loadError={settings.error}
        reload={settings.reload}
        onSaved={(stored) => {
          settings.setData(stored);
          onChange?.();
        }}
      />
    </section>
  );
}

function ScheduleTable({
  schedule,
  busyEntry,
  onToggle,
  onEdit,
  onRemove,
}: {
  schedule: Schedule;
  busyEntry: string | null;
  onToggle: (entry: ScheduleEntry) => void;
  onEdit: (entry: ScheduleEntry) => void;
  onRemove: (entry: ScheduleEntry) => void;
}) {
  const { schedules, timezone } = schedule.document;
  if (schedules.length === 0) {
    return <p className={styles.empty}>No scheduled backups: only backups started by hand are made.</p>;
  }
  return (
    <div className={styles.tableWrap}>
      <table className={`${styles.table} ${styles.responsiveTable}`} aria-label="Scheduled backups">
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Type</th>
            <th scope="col">When ({timezone})</th>
            <th scope="col">Next runs</th>
            <th scope="col">Enabled</th>
            <th scope="col">
              <span className={styles.visuallyHidden}>Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {schedules.map((entry) => {
            const nameId = `schedule-${entry.name}-name`;
            const runs = schedule.next_fire_times?.[entry.name] ?? [];
            return (
              <tr key={entry.name} data-schedule={entry.name}>
                <th scope="row" data-label="Name">
                  <span id={nameId}>{entry.name}</span>
                  {entry.archive ? <span className={styles.tag}>archive</span> : null}
                  {entry.description ? <span className={styles.small}>{entry.description}</span> : null}
                </th>
                <td data-label="Type">{entry.type}</td>
                <td data-label="When">
                  <span>{describeCron(entry.cron)}</span>
                  <code className={styles.cron}>{entry.cron}</code>
                </td>
                <td data-label="Next runs">
                  {entry.enabled ? (
                    runs.length > 0 ? (
                      <NextRuns runs={runs} />
                    ) : (
                      <span className={styles.muted}>none coming</span>
                    )
                  ) : (
                    <span className={styles.muted}>disabled: does not run</span>
                  )}
                </td>
                <td data-label="Enabled">
                  <label className={styles.switch}>
                    <input
                      type="checkbox"
                      role="switch"
                      checked={entry.enabled}
                      disabled={busyEntry !== null}
                      aria-label={`${entry.name} enabled`}
                      onChange={() => onToggle(entry)}
                    />
                    <span aria-hidden="true">{entry.enabled ? "On" : "Off"}</span>
                  </label>
                </td>
                <td data-label="Actions" className={styles.actionsCell}>
                  <div className={styles.rowActions}>
                    <button
                      type="button"
                      className={styles.buttonSmall}
                      aria-describedby={nameId}
                      onClick={() => onEdit(entry)}
                    >
                      Edit
                    </button>
                    <button
                      type="button"
                      className={`${styles.buttonSmall} ${styles.buttonDanger}`}
                      aria-describedby={nameId}
                      onClick={() => onRemove(entry)}
                    >
                      Remove
                    </button>
                  </div>
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/** The coming runs in words: "in 40 minutes (Wed, Dec 2, 02:00), then tomorrow and in 2 days". */
function NextRuns({ runs }: { runs: readonly string[] }) {
  const [next, ...later] = runs.slice(0, NEXT_RUNS_SHOWN);
  if (!next) return null;
  return (
    <p className={styles.runs}>
      <time dateTime={next} title={next}>
        <strong>{formatRelative(next)}</strong>
      </time>{" "}
      <span className={styles.small}>{formatWeekdayTime(next)}</span>
      {later.length > 0 ? (
        <span className={styles.small}>
          then{" "}
          {later.map((run, index) => (
            <span key={run}>
              {index > 0 ? " and " : ""}
              <time dateTime={run} title={formatWeekdayTime(run)}>
                {formatRelative(run)}
              </time>
            </span>
          ))}
        </span>
      ) : null}
    </p>
  );
}

const EMPTY_ENTRY: ScheduleEntry = {
  name: "",
  type: "database",
  cron: "0 2 * * *",
  description: "",
  enabled: true,
  archive: false,
};

type EntryField = keyof ScheduleEntry;

function EntryForm({
  schedule,
  originalName,
  save,
  onDone,
  onCancel,
}: {
  schedule: Schedule;
  /** The entry edited, or null for a new one. */
  originalName: string | null;
  save: (change: (document: ScheduleDocument) => ScheduleDocument) => Promise<Schedule>;
  onDone: (entry: ScheduleEntry) => void;
  onCancel: () => void;
}) {
  const initial = schedule.document.schedules.find((entry) => entry.name === originalName) ?? EMPTY_ENTRY;
  const [entry, setEntry] = useState<ScheduleEntry>(initial);
  const [errors, setErrors] = useState<Partial<Record<EntryField, string>>>({});
  const [failure, setFailure] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  const set = <K extends EntryField>(key: K, value: ScheduleEntry[K]) => setEntry((e) => ({ ...e, [key]: value }));

  function problems(): Partial<Record<EntryField, string>> {
    const found: Partial<Record<EntryField, string>> = {};
    if (!ENTRY_NAME.test(entry.name)) {
      found.name = "Use 1 to 64 lower-case letters, digits, “-” or “_”, starting with a letter or digit.";
    } else if (entry.name !== originalName && schedule.document.schedules.some((other) => other.name === entry.name)) {
      found.name = `There is already a schedule named “${entry.name}”.`;
    }
    const cron = cronProblem(entry.cron);
    if (cron) found.cron = cron;
    return found;
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    const found = problems();
    setErrors(found);
    setFailure(null);
    if (Object.keys(found).length > 0) return;
    setBusy(true);
    const cleaned: ScheduleEntry = {
      ...entry,
      cron: entry.cron.trim().replace(/\s+/g, " "),
      description: entry.description.trim(),
    };
    let index = -1;
    try {
      await save((document) => {
        const others = document.schedules;
        index = originalName === null ? -1 : others.findIndex((e) => e.name === originalName);
        const schedules = index === -1 ? [...others, cleaned] : others.map((e, i) => (i === index ? cleaned : e));
        if (index === -1) index = schedules.length - 1;
        return { ...document, schedules };
      });
      onDone(cleaned);
    } catch (error) {
      setBusy(false);
      const placed = placeEntryError(error, index);
      setErrors(placed);
      if (Object.keys(placed).length === 0) setFailure(error);
    }
  }

  const describe = (name: EntryField, hint = false) => ({
    "aria-invalid": errors[name] ? true : undefined,
    "aria-describedby": `${hint ? `${id}-${name}-hint ` : ""}${id}-${name}-error`,
  });

  return (
    <form
      className={styles.panel}
      aria-label={originalName ? `Edit schedule ${originalName}` : "New schedule"}
      onSubmit={(event) => void submit(event)}
      onKeyDown={(event) => {
        if (event.key === "Escape") onCancel();
      }}
      noValidate
    >
      <h3 className={styles.panelTitle}>{originalName ? `Edit schedule “${originalName}”` : "New schedule"}</h3>
      <div className={styles.formGrid}>
        <div className={styles.field}>
          <label htmlFor={`${id}-name`}>Name</label>
          <input
            id={`${id}-name`}
            value={entry.name}
            onChange={(e) => set("name", e.target.value)}
            autoComplete="off"
            spellCheck={false}
            placeholder="nightly-database"
            {...describe("name")}
          />
          <FieldError id={`${id}-name-error`} message={errors.name} />
        </div>
        <div className={styles.field}>
          <label htmlFor={`${id}-type`}>Type</label>
          <select
            id={`${id}-type`}
            value={entry.type}
            onChange={(e) => set("type", e.target.value as BackupType)}
            {...describe("type")}
          >
            {BACKUP_TYPES.map((type) => (
              <option key={type} value={type}>
                {type}
              </option>
            ))}
          </select>
          <FieldError id={`${id}-type-error`} message={errors.type} />
        </div>
        <div className={styles.field}>
          <label htmlFor={`${id}-cron`}>Cron</label>
          <input
            id={`${id}-cron`}
            value={entry.cron}
            onChange={(e) => set("cron", e.target.value)}
            autoComplete="off"
            spellCheck={false}
            className={styles.mono}
            {...describe("cron", true)}
          />
          <p id={`${id}-cron-hint`} className={styles.hint}>
            {cronProblem(entry.cron) === null
              ? `${describeCron(entry.cron)} (${schedule.document.timezone})`
              : "minute hour day-of-month month day-of-week, e.g. 0 2 * * 1-6"}
          </p>
          <FieldError id={`${id}-cron-error`} message={errors.cron} />
        </div>
        <div className={`${styles.field} ${styles.span2}`}>
          <label htmlFor={`${id}-description`}>Description</label>
          <input
            id={`${id}-description`}
            value={entry.description}
            maxLength={500}
            onChange={(e) => set("description", e.target.value)}
            {...describe("description")}
          />
          <FieldError id={`${id}-description-error`} message={errors.description} />
        </div>
        <div className={styles.checkboxes}>
          <label className={styles.checkboxField}>
            <input type="checkbox" checked={entry.enabled} onChange={(e) => set("enabled", e.target.checked)} />
            <span>Enabled</span>
          </label>
          <label className={styles.checkboxField}>
            <input
              type="checkbox"
              checked={entry.archive}
              onChange={(e) => set("archive", e.target.checked)}
              aria-describedby={`${id}-archive-hint`}
            />
            <span>Keep as monthly archive</span>
          </label>
          <p id={`${id}-archive-hint`} className={styles.hint}>
            Archive backups are kept by the monthly and yearly rules only.
          </p>
          <FieldError id={`${id}-enabled-error`} message={errors.enabled ?? errors.archive} />
        </div>
      </div>
      {failure ? <ErrorMessage title="The schedule was not saved." error={failure} /> : null}
      {Object.keys(errors).length > 0 && !failure ? (
        <p role="alert" className={styles.visuallyHidden}>
          The schedule was not saved: {Object.values(errors).join(" ")}
        </p>
      ) : null}
      <div className={styles.formActions}>
        <button type="submit" className={styles.buttonPrimary} disabled={busy}>
          {busy ? "Saving…" : "Save schedule"}
        </button>
        <button type="button" className={styles.buttonSecondary} onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

/** The gateway's field errors of the entry at `index` (`schedules.3.cron` → cron); the rule that names
 * must be unique comes without a field, and belongs next to the name. */
function placeEntryError(error: unknown, index: number): Partial<Record<EntryField, string>> {
  if (!(error instanceof ApiError) || error.status !== 400) return {};
  const placed: Partial<Record<EntryField, string>> = {};
  const fields = error.fieldErrors(`schedules.${index}.`);
  for (const key of ["name", "type", "cron", "description", "enabled", "archive"] as const) {
    if (fields[key]) placed[key] = fields[key];
  }
  const whole = error.fieldErrors().body;
  if (whole && /unique/.test(whole)) placed.name = whole;
  return placed;
}

function TimezoneForm({
  schedule,
  save,
}: {
  schedule: Schedule;
  save: (change: (document: ScheduleDocument) => ScheduleDocument) => Promise<Schedule>;
}) {
  const [open, setOpen] = useState(false);
  const [timezone, setTimezone] = useState(schedule.document.timezone);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const id = useId();
  const fieldError = error instanceof ApiError ? error.fieldErrors().timezone : undefined;

  if (!open) {
    return (
      <p className={styles.timezoneLine}>
        Times are in the schedule&apos;s time zone, <strong>{schedule.document.timezone}</strong>; next runs are shown
        in yours.{" "}
        <button
          type="button"
          className={styles.linkButton}
          onClick={() => {
            setTimezone(schedule.document.timezone);
            setError(null);
            setOpen(true);
          }}
        >
          Change time zone
        </button>
      </p>
    );
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await save((document) => ({ ...document, timezone: timezone.trim() }));
      setOpen(false);
    } catch (reason) {
      setError(reason);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className={styles.inlineForm} onSubmit={(event) => void submit(event)} aria-label="Schedule time zone">
      <div className={styles.field}>
        <label htmlFor={`${id}-tz`}>Time zone</label>
        <input
          id={`${id}-tz`}
          value={timezone}
          onChange={(e) => setTimezone(e.target.value)}
          placeholder="Europe/Paris"
          aria-invalid={fieldError ? true : undefined}
          aria-describedby={`${id}-tz-error`}
        />
        <FieldError id={`${id}-tz-error`} message={fieldError} />
      </div>
      {error && !fieldError ? <ErrorMessage error={error} /> : null}
      <div className={styles.formActions}>
        <button type="submit" className={styles.buttonPrimary} disabled={busy}>
          Save time zone
        </button>
        <button type="button" className={styles.buttonSecondary} onClick={() => setOpen(false)}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function RemoveDialog({
  entry,
  onRemove,
  onClose,
}: {
  entry: ScheduleEntry;
  onRemove: () => Promise<void>;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const cancelRef = useRef<HTMLButtonElement>(null);
  return (
    <Dialog
      title={`Remove the schedule “${entry.name}”?`}
      onClose={busy ? undefined : onClose}
      initialFocusRef={cancelRef}
      description={
        <p>
          No more {entry.type} backups will be made {describeCron(entry.cron).toLowerCase()}. The backups it already
          made are kept, under the retention policy.
        </p>
      }
    >
      {error ? <ErrorMessage title="It was not removed." error={error} /> : null}
      <div className={styles.formActions}>
        <button
          type="button"
          className={`${styles.buttonPrimary} ${styles.buttonDangerSolid}`}
          disabled={busy}
          onClick={() => {
            setBusy(true);
            setError(null);
            onRemove().catch((reason: unknown) => {
              setError(reason);
              setBusy(false);
            });
          }}
        >
          {busy ? "Removing…" : "Remove"}
        </button>
        <button ref={cancelRef} type="button" className={styles.buttonSecondary} onClick={onClose} disabled={busy}>
          Cancel
        </button>
      </div>
    </Dialog>
  );
}

// ---------------------------------------------------------------------------------------------
// The retention policy (the settings document's `retention` section).

const RULES: ReadonlyArray<{ key: keyof RetentionPolicy; label: string; hint: string; min: number; max: number }> = [
  {
    key: "keep_last",
    label: "Keep last",
    hint: "The newest backups, whatever their age (at least 1).",
    min: 1,
    max: 1000,
  },
  { key: "keep_daily", label: "Daily", hint: "The newest of each of this many days.", min: 0, max: 3650 },
  { key: "keep_weekly", label: "Weekly", hint: "The newest of each of this many ISO weeks.", min: 0, max: 520 },
  {
    key: "keep_monthly",
    label: "Monthly",
    hint: "The newest of each of this many months (archives too).",
    min: 0,
    max: 1200,
  },
  {
    key: "keep_yearly",
    label: "Yearly",
    hint: "The newest of each of this many years (archives too).",
    min: 0,
    max: 100,
  },
  {
    key: "max_age_days",
    label: "Maximum age (days)",
    hint: "Nothing older, whatever the daily to yearly rules say; empty for no limit.",
    min: 1,
    max: 36500,
  },
];

type PolicyText = Record<keyof RetentionPolicy, string>;

function policyText(policy: RetentionPolicy): PolicyText {
  return {
    keep_last: String(policy.keep_last),
    keep_daily: String(policy.keep_daily),
    keep_weekly: String(policy.keep_weekly),
    keep_monthly: String(policy.keep_monthly),
    keep_yearly: String(policy.keep_yearly),
    max_age_days: policy.max_age_days === null ? "" : String(policy.max_age_days),
  };
}

function RetentionSection({
  settings,
  loadError,
  reload,
  onSaved,
}: {
  settings: StoredDocument<SettingsDocument> | null;
  loadError: unknown;
  reload: (quietly?: boolean) => void;
  onSaved: (stored: StoredDocument<SettingsDocument>) => void;
}) {
  const headingId = useId();
  return (
    <div className={styles.subsection} aria-labelledby={headingId} role="group">
      <h3 id={headingId} className={styles.panelTitle}>
        Retention policy
      </h3>
      <p className={styles.hint}>
        For each backup type, a completed backup is kept when any rule keeps it; a backup an incremental needs is always
        kept.
      </p>
      {loadError && !settings ? (
        <ErrorMessage
          title="The retention policy could not be loaded."
          error={loadError}
          action={
            <button type="button" className={styles.linkButton} onClick={() => reload()}>
              Try again
            </button>
          }
        />
      ) : null}
      {!settings && !loadError ? <Loading>Loading the retention policy…</Loading> : null}
      {settings ? <RetentionForm settings={settings} reload={reload} onSaved={onSaved} /> : null}
      {settings ? <RetentionPreviewPanel revision={settings.revision} /> : null}
    </div>
  );
}

function RetentionForm({
  settings,
  reload,
  onSaved,
}: {
  settings: StoredDocument<SettingsDocument>;
  reload: (quietly?: boolean) => void;
  onSaved: (stored: StoredDocument<SettingsDocument>) => void;
}) {
  const api = useBackupApi();
  const [values, setValues] = useState<PolicyText>(() => policyText(settings.document.retention));
  const [errors, setErrors] = useState<Partial<PolicyText>>({});
  const [failure, setFailure] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [saved, setSaved] = useState(false);
  const id = useId();

  async function submit(event: FormEvent) {
    event.preventDefault();
    const found: Partial<PolicyText> = {};
    const policy: Partial<Record<keyof RetentionPolicy, number | null>> = {};
    for (const rule of RULES) {
      const text = values[rule.key].trim();
      if (text === "" && rule.key === "max_age_days") {
        policy[rule.key] = null;
        continue;
      }
      // The gateway takes whole numbers only (a string or 2.5 is refused); say so before sending.
      if (!/^\d+$/.test(text)) found[rule.key] = "Enter a whole number.";
      else policy[rule.key] = Number(text);
    }
    setErrors(found);
    setFailure(null);
    setSaved(false);
    if (Object.keys(found).length > 0) return;
    setBusy(true);
    try {
      // max_age_days: null in a merge patch would mean "reset to the default", which is also null.
      const stored = await api.patchSettings({ retention: policy as RetentionPolicy }, settings.revision);
      setValues(policyText(stored.document.retention));
      setSaved(true);
      onSaved(stored);
    } catch (error) {
      // Someone saved the settings meanwhile: load theirs; the values typed here stay, to be saved again.
      if (error instanceof ApiError && error.status === 412) reload(true);
      const placed = error instanceof ApiError ? (error.fieldErrors("retention.") as Partial<PolicyText>) : {};
      setErrors(placed);
      if (Object.keys(placed).length === 0) setFailure(error);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form onSubmit={(event) => void submit(event)} aria-label="Retention policy" noValidate>
      <div className={styles.ruleGrid}>
        {RULES.map((rule) => (
          <div key={rule.key} className={styles.field}>
            <label htmlFor={`${id}-${rule.key}`}>{rule.label}</label>
            <input
              id={`${id}-${rule.key}`}
              type="number"
              inputMode="numeric"
              min={rule.min}
              max={rule.max}
              step={1}
              value={values[rule.key]}
              onChange={(e) => setValues((v) => ({ ...v, [rule.key]: e.target.value }))}
              aria-invalid={errors[rule.key] ? true : undefined}
              aria-describedby={`${id}-${rule.key}-hint ${id}-${rule.key}-error`}
            />
            <p id={`${id}-${rule.key}-hint`} className={styles.hint}>
              {rule.hint}
            </p>
            <FieldError id={`${id}-${rule.key}-error`} message={errors[rule.key]} />
          </div>
        ))}
      </div>
      {failure ? <ErrorMessage title="The retention policy was not saved." error={failure} /> : null}
      <div className={styles.formActions}>
        <button type="submit" className={styles.buttonPrimary} disabled={busy}>
          {busy ? "Saving…" : "Save retention policy"}
        </button>
        <span role="status" className={styles.success}>
          {saved ? `Saved (revision ${settings.revision}).` : ""}
        </span>
      </div>
    </form>
  );
}

/** What the saved policy would keep and delete now: read on demand, as it weighs every backup. */
function RetentionPreviewPanel({ revision }: { revision: number }) {
  const api = useBackupApi();
  const [preview, setPreview] = useState<{ revision: number; plan: RetentionPreview } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  async function load() {
    setBusy(true);
    setError(null);
    try {
      setPreview({ revision, plan: await api.getRetentionPreview() });
    } catch (reason) {
      setError(reason);
    } finally {
      setBusy(false);
    }
  }

  const plan = preview?.plan;
  return (
    <div className={styles.preview}>
      <button type="button" className={styles.buttonSecondary} onClick={() => void load()} disabled={busy}>
        {busy ? "Weighing the backups…" : "Preview what the policy keeps"}
      </button>
      {error ? <ErrorMessage error={error} /> : null}
      {plan ? (
        <div role="status" className={styles.previewResult}>
          <p>
            Applied now, the saved policy keeps <strong>{plan.keep.length}</strong> completed{" "}
            {plan.keep.length === 1 ? "backup" : "backups"} and deletes <strong>{plan.delete.length}</strong>.
            {preview && preview.revision !== revision ? " (Read before the last change: preview again.)" : ""}
          </p>
          {plan.delete.length > 0 ? (
            <ul className={styles.warningList}>
              {plan.delete.map((item) => (
                <li key={item.id}>
                  <code title={item.id}>{shortId(item.id)}</code>: {item.reason}
                </li>
              ))}
            </ul>
          ) : (
            <Badge tone="ok">nothing would be deleted</Badge>
          )}
        </div>
      ) : null}
    </div>
  );
}
