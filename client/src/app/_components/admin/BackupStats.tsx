"use client";

/**
 * Statistics: how many backups of each kind and state, when each type last succeeded and how long
 * ago, the 30-day success rate, storage used and free, verification results, and a chart of backup
 * sizes over time (where a trend — a database that doubled, a backup that shrank to nothing — shows
 * at a glance what a table of numbers hides).
 */

import { useId } from "react";

import { BACKUP_STATUSES, BACKUP_TYPES, type Backup, type BackupType, type Stats } from "../../../lib/backupApi";
import { useBackupApi } from "../../../lib/BackupApiProvider";
import {
  capitalize,
  formatBytes,
  formatDateTime,
  formatPercent,
  formatRelative,
  formatShortDate,
  formatShortDateTime,
  hoursSince,
} from "../../../lib/format";
import { useLoad } from "../../../lib/useLoad";

import styles from "./admin.module.css";
import { Badge, ErrorMessage, Loading } from "./ui";

/** A type whose last success is older than this is flagged: the default schedule backs up daily. */
export const STALE_AFTER_HOURS = 48;
/** How many completed backups the chart plots, newest first. */
const CHART_BACKUPS = 200;

export interface BackupStatsProps {
  /** Changes whenever the numbers may have changed (a backup ended): the section reads them again. */
  refreshKey?: number;
}

export function BackupStats({ refreshKey = 0 }: BackupStatsProps) {
  const api = useBackupApi();
  const stats = useLoad((signal) => api.getStats(signal), `stats-${refreshKey}`);
  const history = useLoad(
    (signal) => api.listBackups({ status: ["completed"], limit: CHART_BACKUPS }, signal),
    `history-${refreshKey}`,
  );
  const headingId = useId();
  const data = stats.data;

  return (
    <section aria-labelledby={headingId} className={styles.section} id="statistics">
      <div className={styles.sectionHeader}>
        <h2 id={headingId} className={styles.sectionTitle}>
          Statistics
        </h2>
        <div className={styles.sectionActions}>
          <button
            type="button"
            className={styles.buttonSecondary}
            onClick={() => {
              stats.reload(true);
              history.reload(true);
            }}
          >
            Refresh
          </button>
        </div>
      </div>
      {stats.error ? (
        <ErrorMessage
          title="The statistics could not be loaded."
          error={stats.error}
          action={
            <button type="button" className={styles.linkButton} onClick={() => stats.reload()}>
              Try again
            </button>
          }
        />
      ) : null}
      {!data && !stats.error ? <Loading>Loading statistics…</Loading> : null}
      {data ? <StatsView stats={data} /> : null}
      <SizeHistory backups={history.data?.backups ?? null} error={history.error} />
    </section>
  );
}

function StatsView({ stats }: { stats: Stats }) {
  const rate = stats.last_30_days.success_rate;
  const { storage } = stats;
  const free = storage.filesystem_free_bytes;
  const fsTotal = storage.filesystem_total_bytes;
  const fsUsedShare = free !== null && fsTotal ? (fsTotal - free) / fsTotal : null;
  const verified = stats.verification.verified ?? 0;
  const verifyFailed = stats.verification.failed ?? 0;
  const never = stats.verification.never ?? 0;

  return (
    <>
      <div className={styles.cards}>
        <div className={styles.card}>
          <h3 className={styles.cardTitle}>Total backups</h3>
          <p className={styles.cardValue}>{stats.total.toLocaleString()}</p>
          <ul className={styles.inlineList} aria-label="Backups by status">
            {BACKUP_STATUSES.filter((status) => (stats.by_status[status] ?? 0) > 0).map((status) => (
              <li key={status}>
                {(stats.by_status[status] ?? 0).toLocaleString()} {status}
              </li>
            ))}
          </ul>
        </div>

        <div className={styles.card}>
          <h3 className={styles.cardTitle}>Success, last 30 days</h3>
          <p className={`${styles.cardValue} ${rate !== null && rate < 0.9 ? styles.valueBad : ""}`}>
            {rate === null ? "—" : formatPercent(rate)}
          </p>
          <p className={styles.small}>
            {stats.last_30_days.completed.toLocaleString()} completed, {stats.last_30_days.failed.toLocaleString()}{" "}
            failed
            {rate === null ? " (nothing finished yet)" : ""}
          </p>
        </div>

        <div className={styles.card}>
          <h3 className={styles.cardTitle}>Storage</h3>
          <p className={styles.cardValue}>{formatBytes(storage.used_bytes)}</p>
          <p className={styles.small}>used by completed backups</p>
          {free !== null && fsTotal ? (
            <>
              <div
                role="meter"
                aria-label="Storage filesystem in use"
                aria-valuemin={0}
                aria-valuemax={100}
                aria-valuenow={Math.round((fsUsedShare ?? 0) * 100)}
                aria-valuetext={`${formatBytes(free)} free of ${formatBytes(fsTotal)}`}
                className={`${styles.meter} ${(fsUsedShare ?? 0) > 0.9 ? styles.meterFull : ""}`}
              >
                <div className={styles.meterFill} style={{ width: `${Math.round((fsUsedShare ?? 0) * 100)}%` }} />
              </div>
              <p className={styles.small}>
                {formatBytes(free)} free of {formatBytes(fsTotal)}
              </p>
            </>
          ) : (
            <p className={styles.small}>Free space unknown (the storage does not say).</p>
          )}
        </div>

        <div className={styles.card}>
          <h3 className={styles.cardTitle}>Verification</h3>
          <p className={`${styles.cardValue} ${verifyFailed > 0 ? styles.valueBad : ""}`}>
            {verified.toLocaleString()} <span className={styles.cardUnit}>verified</span>
          </p>
          <p className={styles.small}>
            {verifyFailed.toLocaleString()} failed, {never.toLocaleString()} not yet verified
          </p>
        </div>
      </div>

      <div className={styles.tableWrap}>
        <table className={`${styles.table} ${styles.statsTable}`}>
          <caption className={styles.caption}>By type</caption>
          <thead>
            <tr>
              <th scope="col">Type</th>
              <th scope="col">Last success</th>
              <th scope="col" className={styles.numeric}>
                Backups
              </th>
              <th scope="col" className={styles.numeric}>
                Stored
              </th>
            </tr>
          </thead>
          <tbody>
            {BACKUP_TYPES.map((type) => (
              <LastSuccessRow key={type} type={type} stats={stats} />
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}

function LastSuccessRow({ type, stats }: { type: BackupType; stats: Stats }) {
  const last = stats.last_success[type] ?? null;
  const stale = hoursSince(last?.completed_at) > STALE_AFTER_HOURS;
  return (
    <tr>
      <th scope="row">{capitalize(type)}</th>
      <td>
        {last ? (
          <>
            <time dateTime={last.completed_at} title={formatDateTime(last.completed_at)}>
              {formatRelative(last.completed_at)}
            </time>{" "}
            <span className={styles.small}>
              ({formatDateTime(last.completed_at)}, {formatBytes(last.size_bytes)})
            </span>{" "}
            {stale ? <Badge tone="warn">over {STALE_AFTER_HOURS} hours ago</Badge> : null}
          </>
        ) : (
          <span className={styles.muted}>never</span>
        )}
      </td>
      <td className={styles.numeric}>{(stats.by_type[type] ?? 0).toLocaleString()}</td>
      <td className={styles.numeric}>{formatBytes(stats.bytes_by_type[type] ?? 0)}</td>
    </tr>
  );
}

// ---------------------------------------------------------------------------------------------
// The chart: an inline SVG (no charting library for one scatter of a few hundred points).

const TYPE_COLOURS: Record<BackupType, string> = {
  full: "var(--chart-full)",
  database: "var(--chart-database)",
  files: "var(--chart-files)",
  incremental: "var(--chart-incremental)",
};
// Shapes as well as colours, so the series stay apart in grey-scale and for the colour-blind.
const TYPE_SHAPES: Record<BackupType, "circle" | "square" | "diamond" | "triangle"> = {
  full: "circle",
  database: "square",
  files: "diamond",
  incremental: "triangle",
};

const WIDTH = 720;
const HEIGHT = 240;
const MARGIN = { top: 12, right: 16, bottom: 28, left: 64 };

interface Point {
  backup: Backup;
  time: number;
  size: number;
}

function SizeHistory({ backups, error }: { backups: Backup[] | null; error: unknown }) {
  const titleId = useId();
  const descriptionId = useId();
  if (error) return <ErrorMessage title="The size history could not be loaded." error={error} />;
  if (!backups) return null;
  const points: Point[] = backups
    .filter((backup) => backup.completed_at)
    .map((backup) => ({
      backup,
      time: new Date(backup.completed_at ?? backup.created_at).getTime(),
      size: backup.size_bytes,
    }))
    .sort((a, b) => a.time - b.time);

  return (
    <figure className={styles.chartFigure} aria-labelledby={titleId}>
      <figcaption id={titleId} className={styles.caption}>
        Backup sizes over time
      </figcaption>
      {points.length === 0 ? (
        <p className={styles.muted}>No completed backup yet: the chart starts with the first one.</p>
      ) : (
        <>
          <SizeChart points={points} titleId={titleId} descriptionId={descriptionId} />
          <ul className={styles.legend} aria-label="Legend">
            {BACKUP_TYPES.filter((type) => points.some((p) => p.backup.type === type)).map((type) => (
              <li key={type}>
                <svg width="12" height="12" aria-hidden="true" viewBox="-6 -6 12 12">
                  <Marker shape={TYPE_SHAPES[type]} colour={TYPE_COLOURS[type]} x={0} y={0} />
                </svg>
                {capitalize(type)}
              </li>
            ))}
          </ul>
          <details className={styles.disclosure}>
            <summary>The chart&apos;s data as a table</summary>
            <div className={styles.tableWrap}>
              <table className={styles.table}>
                <thead>
                  <tr>
                    <th scope="col">Completed</th>
                    <th scope="col">Type</th>
                    <th scope="col" className={styles.numeric}>
                      Size
                    </th>
                    <th scope="col">Description</th>
                  </tr>
                </thead>
                <tbody>
                  {[...points].reverse().map(({ backup }) => (
                    <tr key={backup.id}>
                      <td>{formatDateTime(backup.completed_at)}</td>
                      <td>{backup.type}</td>
                      <td className={styles.numeric}>{formatBytes(backup.size_bytes)}</td>
                      <td>{backup.description}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </details>
        </>
      )}
    </figure>
  );
}

/** Round steps for the size axis: 1, 2 or 5 times a power of 1024-based units reads best. */
function niceMax(value: number): number {
  if (value <= 0) return 1024;
  const unit = 1024 ** Math.floor(Math.log(value) / Math.log(1024));
  const scaled = value / unit;
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1024].find((s) => s >= scaled) ?? 1024;
  return step * unit;
}

function SizeChart({ points, titleId, descriptionId }: { points: Point[]; titleId: string; descriptionId: string }) {
  const first = points[0];
  const last = points[points.length - 1];
  if (!first || !last) return null;
  const maxSize = niceMax(Math.max(...points.map((p) => p.size)));
  // Backups made minutes apart (or a single one) still get an axis two hours wide, centred on them,
  // so no point sits on an edge.
  const MIN_SPAN = 2 * 3_600_000;
  const actual = last.time - first.time;
  const span = Math.max(actual, MIN_SPAN);
  const start = first.time - (span - actual) / 2;
  const innerWidth = WIDTH - MARGIN.left - MARGIN.right;
  const innerHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (time: number) => MARGIN.left + ((time - start) / span) * innerWidth;
  const y = (size: number) => MARGIN.top + innerHeight - (size / maxSize) * innerHeight;
  const yTicks = [0, 0.25, 0.5, 0.75, 1].map((share) => share * maxSize);
  const xTicks = [0, 1 / 3, 2 / 3, 1].map((share) => start + share * span);
  const largest = points.reduce((a, b) => (b.size > a.size ? b : a));

  const lines = BACKUP_TYPES.map((type) => {
    const series = points.filter((p) => p.backup.type === type);
    return series.length > 1 ? (
      <polyline
        key={type}
        fill="none"
        stroke={TYPE_COLOURS[type]}
        strokeWidth={1.5}
        strokeOpacity={0.6}
        points={series.map((p) => `${x(p.time).toFixed(1)},${y(p.size).toFixed(1)}`).join(" ")}
      />
    ) : null;
  });

  return (
    <>
      <p id={descriptionId} className={styles.visuallyHidden}>
        {points.length} completed backups from {formatDateTime(new Date(first.time).toISOString())} to{" "}
        {formatDateTime(new Date(last.time).toISOString())}; the largest is {formatBytes(largest.size)} (
        {largest.backup.type}, {formatDateTime(largest.backup.completed_at)}), the latest {formatBytes(last.size)} (
        {last.backup.type}). The table below the chart lists them all.
      </p>
      <svg
        className={styles.chart}
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        role="img"
        aria-labelledby={titleId}
        aria-describedby={descriptionId}
        preserveAspectRatio="xMidYMid meet"
      >
        {yTicks.map((tick) => (
          <g key={tick}>
            <line x1={MARGIN.left} x2={WIDTH - MARGIN.right} y1={y(tick)} y2={y(tick)} className={styles.chartGrid} />
            <text x={MARGIN.left - 8} y={y(tick)} dy="0.32em" textAnchor="end" className={styles.chartLabel}>
              {formatBytes(tick)}
            </text>
          </g>
        ))}
        {xTicks.map((tick, index) => (
          <text
            key={tick}
            x={x(tick)}
            y={HEIGHT - 8}
            textAnchor={index === 0 ? "start" : index === xTicks.length - 1 ? "end" : "middle"}
            className={styles.chartLabel}
          >
            {span <= 3 * 86_400_000 ? formatShortDateTime(new Date(tick)) : formatShortDate(new Date(tick))}
          </text>
        ))}
        {lines}
        {points.map((p) => (
          <Marker
            key={p.backup.id}
            shape={TYPE_SHAPES[p.backup.type]}
            colour={TYPE_COLOURS[p.backup.type]}
            x={x(p.time)}
            y={y(p.size)}
            title={`${capitalize(p.backup.type)}, ${formatBytes(p.size)}, ${formatDateTime(p.backup.completed_at)}${
              p.backup.description ? ` — ${p.backup.description}` : ""
            }`}
          />
        ))}
      </svg>
    </>
  );
}

function Marker({
  shape,
  colour,
  x,
  y,
  title,
}: {
  shape: (typeof TYPE_SHAPES)[BackupType];
  colour: string;
  x: number;
  y: number;
  title?: string;
}) {
  const tooltip = title ? <title>{title}</title> : null;
  const common = { fill: colour, stroke: "var(--surface)", strokeWidth: 1 };
  switch (shape) {
    case "circle":
      return (
        <circle cx={x} cy={y} r={4.5} {...common}>
          {tooltip}
        </circle>
      );
    case "square":
      return (
        <rect x={x - 4} y={y - 4} width={8} height={8} {...common}>
          {tooltip}
        </rect>
      );
    case "diamond":
      return (
        <polygon points={`${x},${y - 5.5} ${x + 5.5},${y} ${x},${y + 5.5} ${x - 5.5},${y}`} {...common}>
          {tooltip}
        </polygon>
      );
    case "triangle":
      return (
        <polygon points={`${x},${y - 5.5} ${x + 5.5},${y + 4.5} ${x - 5.5},${y + 4.5}`} {...common}>
          {tooltip}
        </polygon>
      );
  }
}
