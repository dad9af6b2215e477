/**
 * Five-field cron expressions (minute hour day-of-month month day-of-week) in words, for the schedule.
 *
 * The gateway validates cron expressions and computes the next fire times itself; this only says what
 * a valid expression means, and tells a malformed one early while it is typed. Expressions it has no
 * sentence for are described field by field rather than guessed at.
 */

const WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"] as const;
const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
] as const;
const WEEKDAY_NAMES: Record<string, number> = { sun: 0, mon: 1, tue: 2, wed: 3, thu: 4, fri: 5, sat: 6 };
const MONTH_NAMES: Record<string, number> = {
  jan: 1,
  feb: 2,
  mar: 3,
  apr: 4,
  may: 5,
  jun: 6,
  jul: 7,
  aug: 8,
  sep: 9,
  oct: 10,
  nov: 11,
  dec: 12,
};

interface FieldSpec {
  name: string;
  min: number;
  max: number;
  names?: Record<string, number>;
}

const FIELDS: readonly FieldSpec[] = [
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day of month", min: 1, max: 31 },
  { name: "month", min: 1, max: 12, names: MONTH_NAMES },
  // 7 is Sunday too, as in most crons.
  { name: "day of week", min: 0, max: 7, names: WEEKDAY_NAMES },
];

/** Why `expression` is not a valid five-field cron expression, or null when it is. */
export function cronProblem(expression: string): string | null {
  const fields = expression.trim().split(/\s+/).filter(Boolean);
  if (fields.length !== 5) {
    return `A cron expression has five fields (minute hour day-of-month month day-of-week); this one has ${fields.length}.`;
  }
  for (const [index, field] of fields.entries()) {
    const spec = FIELDS[index];
    if (spec && expand(field, spec) === null) return `The ${spec.name} field "${field}" is not valid.`;
  }
  return null;
}

/** The values a field selects, or null when it is malformed. */
function expand(field: string, spec: FieldSpec): number[] | null {
  const values = new Set<number>();
  for (const item of field.split(",")) {
    const [range = "", stepText] = item.split("/");
    const step = stepText === undefined ? 1 : Number(stepText);
    if (!Number.isInteger(step) || step < 1) return null;
    let low: number;
    let high: number;
    if (range === "*") {
      [low, high] = [spec.min, spec.max];
    } else {
      const [lowText = "", highText] = range.split("-");
      const first = value(lowText, spec);
      const last = highText === undefined ? (stepText === undefined ? first : spec.max) : value(highText, spec);
      if (first === null || last === null || first > last) return null;
      [low, high] = [first, last];
    }
    for (let v = low; v <= high; v += step) values.add(spec.name === "day of week" && v === 7 ? 0 : v);
  }
  return [...values].sort((a, b) => a - b);
}

function value(text: string, spec: FieldSpec): number | null {
  const named = spec.names?.[text.toLowerCase()];
  if (named !== undefined) return named;
  if (!/^\d+$/.test(text)) return null;
  const number = Number(text);
  return number >= spec.min && number <= spec.max ? number : null;
}

const pad = (n: number) => String(n).padStart(2, "0");

/** `expression` in words: "Every day at 02:00", "Monday to Saturday at 02:00", "Every 15 minutes". */
export function describeCron(expression: string): string {
  if (cronProblem(expression) !== null) return "Not a valid cron expression";
  const [minute = "", hour = "", dayOfMonth = "", month = "", dayOfWeek = ""] = expression.trim().split(/\s+/);
  const minutes = expand(minute, FIELDS[0] as FieldSpec) ?? [];
  const hours = expand(hour, FIELDS[1] as FieldSpec) ?? [];

  let time: string;
  const everyMinuteStep = /^\*\/(\d+)$/.exec(minute);
  if (minute === "*" && hour === "*") time = "every minute";
  else if (everyMinuteStep && hour === "*") time = `every ${everyMinuteStep[1]} minutes`;
  else if (hour === "*" && minutes.length === 1) time = `every hour at minute ${minutes[0]}`;
  else if (minutes.length * hours.length <= 4 && minutes.length > 0 && hours.length > 0) {
    time = `at ${hours.flatMap((h) => minutes.map((m) => `${pad(h)}:${pad(m)}`)).join(", ")}`;
  } else {
    time = `at minute ${minute} of hour ${hour}`;
  }

  const days = describeDays(dayOfMonth, dayOfWeek);
  const months =
    month === "*"
      ? ""
      : ` in ${listOf((expand(month, FIELDS[3] as FieldSpec) ?? []).map((m) => MONTHS[m - 1] ?? String(m)))}`;
  if (days) return capitalizeFirst(`${days}${months} ${time}`);
  return capitalizeFirst(time.startsWith("every") ? `${time}${months}` : `every day${months} ${time}`);
}

/** The days an expression fires on, in words; "" for every day. */
function describeDays(dayOfMonth: string, dayOfWeek: string): string {
  const monthDays = expand(dayOfMonth, FIELDS[2] as FieldSpec) ?? [];
  const weekDays = expand(dayOfWeek, FIELDS[4] as FieldSpec) ?? [];
  const onMonthDays = dayOfMonth === "*" ? "" : `on day ${listOf(monthDays.map(String))} of the month`;
  let onWeekDays = "";
  if (dayOfWeek !== "*") {
    const run = contiguous(weekDays);
    onWeekDays =
      run && weekDays.length > 2
        ? `${WEEKDAYS[run[0]]} to ${WEEKDAYS[run[1]]}`
        : weekDays.length === 1
          ? `${WEEKDAYS[weekDays[0] ?? 0]}s`
          : listOf(weekDays.map((d) => WEEKDAYS[d] ?? String(d)));
  }
  // Cron fires when either restricted day field matches (Vixie cron's rule).
  if (onMonthDays && onWeekDays) return `${onMonthDays} and ${onWeekDays}`;
  if (onMonthDays) return onMonthDays;
  return onWeekDays;
}

function contiguous(values: number[]): [number, number] | null {
  if (values.length < 2) return null;
  for (let i = 1; i < values.length; i += 1) {
    if ((values[i] ?? 0) !== (values[i - 1] ?? 0) + 1) return null;
  }
  return [values[0] ?? 0, values[values.length - 1] ?? 0];
}

function listOf(items: string[]): string {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

function capitalizeFirst(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
