/** How the page writes sizes, dates, ages and ids: one place, so every section says them alike. */

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

/** `1536` → `1.5 KiB`: binary units, as `backupctl` and the storage's own tools print them. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "—";
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const sign = bytes < 0 ? "-" : "";
  if (unit === 0) return `${sign}${value} B`;
  // Three significant digits at most: 1.23 GiB, 12.3 GiB, 123 GiB.
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${sign}${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const weekdayTimeFormat = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});
const shortDateFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const shortDateTimeFormat = new Intl.DateTimeFormat(undefined, {
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});

/** A moment in the reader's own time zone and language, e.g. "2 Dec 2025, 14:05". */
export function formatDateTime(iso: string | null | undefined): string {
  const date = parseDate(iso);
  return date ? dateTimeFormat.format(date) : "—";
}

/** A coming run, e.g. "Tue 2 Dec, 02:00". */
export function formatWeekdayTime(iso: string): string {
  const date = parseDate(iso);
  return date ? weekdayTimeFormat.format(date) : iso;
}

/** An axis label, e.g. "2 Dec". */
export function formatShortDate(date: Date): string {
  return shortDateFormat.format(date);
}

/** An axis label over a few days, e.g. "2 Dec, 14:00". */
export function formatShortDateTime(date: Date): string {
  return shortDateTimeFormat.format(date);
}

function parseDate(iso: string | null | undefined): Date | null {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const RELATIVE_STEPS: ReadonlyArray<[Intl.RelativeTimeFormatUnit, number]> = [
  ["second", 60],
  ["minute", 60],
  ["hour", 24],
  ["day", 7],
  ["week", 4.35],
  ["month", 12],
  ["year", Number.POSITIVE_INFINITY],
];

/** `iso` relative to `now`, in words: "3 hours ago", "in 5 minutes", "yesterday". */
export function formatRelative(iso: string | null | undefined, now: Date = new Date()): string {
  const date = parseDate(iso);
  if (!date) return "never";
  let amount = (date.getTime() - now.getTime()) / 1000;
  if (Math.abs(amount) < 45) return amount < 0 ? "just now" : "in a moment";
  for (const [unit, size] of RELATIVE_STEPS) {
    if (Math.abs(amount) < size) return relativeFormat.format(Math.round(amount), unit);
    amount /= size;
  }
  return relativeFormat.format(Math.round(amount), "year");
}

/** Hours since `iso`, or Infinity when it never happened. */
export function hoursSince(iso: string | null | undefined, now: Date = new Date()): number {
  const date = parseDate(iso);
  return date ? (now.getTime() - date.getTime()) / 3_600_000 : Number.POSITIVE_INFINITY;
}

/** `0.9567` → `95.7%`. */
export function formatPercent(ratio: number): string {
  const percent = ratio * 100;
  return `${percent >= 99.95 || percent === 0 ? percent.toFixed(0) : percent.toFixed(1)}%`;
}

/** The first block of a UUID: enough to tell backups apart on screen; the full id is in its title. */
export function shortId(id: string): string {
  return id.split("-")[0] ?? id;
}

/** "database" → "Database". */
export function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** "pre-restore" or "in_place" → "pre restore", "in place". */
export function humanize(word: string): string {
  return word.replace(/[_-]+/g, " ");
}
