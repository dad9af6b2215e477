/**
 * A fake of the gateway's admin API for component tests: `fetch` is stubbed with a router of
 * handlers keyed "METHOD /path/:param", and every request is recorded for assertions.
 */

import { vi } from "vitest";

import type {
  Backup,
  BackupDetail,
  Restore,
  ScheduleDocument,
  SettingsDocument,
  Stats,
  StoredDocument,
} from "../../src/lib/backupApi";

export interface FakeRequest {
  method: string;
  url: URL;
  path: string;
  params: Record<string, string>;
  headers: Headers;
  body: unknown;
}

export type Handler = (request: FakeRequest) => Response | Promise<Response>;

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

export function apiError(status: number, code: string, message: string, details?: unknown[]): Response {
  return json(status, { error: { code, message, ...(details ? { details } : {}) } });
}

function matches(pattern: string, path: string): Record<string, string> | null {
  const want = pattern.split("/");
  const got = path.split("/");
  if (want.length !== got.length) return null;
  const params: Record<string, string> = {};
  for (const [index, segment] of want.entries()) {
    const actual = got[index] ?? "";
    if (segment.startsWith(":")) params[segment.slice(1)] = decodeURIComponent(actual);
    else if (segment !== actual) return null;
  }
  return params;
}

export interface FakeGateway {
  requests: FakeRequest[];
  /** Replaces (or adds) the handler of a route. */
  on: (route: string, handler: Handler) => void;
  /** The requests made to a route ("GET /api/admin/backup/list"). */
  to: (route: string) => FakeRequest[];
}

/** Stubs the global fetch with `routes`; an unknown route answers 404 as the gateway does. */
export function fakeGateway(routes: Record<string, Handler> = {}): FakeGateway {
  const table = new Map<string, Handler>(Object.entries(routes));
  const requests: FakeRequest[] = [];
  const fetchStub = vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const url = new URL(String(input), "http://gateway.test");
    const method = (init.method ?? "GET").toUpperCase();
    const headers = new Headers(init.headers);
    const body = typeof init.body === "string" ? (JSON.parse(init.body) as unknown) : undefined;
    // Named routes win over parameters, as in the gateway (`/list` is never a backup id).
    const ordered = [...table.entries()].sort(([a], [b]) => a.split(":").length - b.split(":").length);
    for (const [route, handler] of ordered) {
      const [routeMethod, pattern = ""] = route.split(" ");
      const params = routeMethod === method ? matches(pattern, url.pathname) : null;
      if (params) {
        const request = { method, url, path: url.pathname, params, headers, body };
        requests.push(request);
        return handler(request);
      }
    }
    requests.push({ method, url, path: url.pathname, params: {}, headers, body });
    return apiError(404, "not_found", `no route ${url.pathname}`);
  });
  vi.stubGlobal("fetch", fetchStub);
  return {
    requests,
    on: (route, handler) => table.set(route, handler),
    to: (route) => {
      const [method, path] = route.split(" ");
      return requests.filter((r) => r.method === method && r.path === path);
    },
  };
}

let counter = 0;

export function aBackup(overrides: Partial<BackupDetail> = {}): BackupDetail {
  counter += 1;
  const id = overrides.id ?? `0000000${counter}-aaaa-4bbb-8ccc-${String(counter).padStart(12, "0")}`;
  const type = overrides.type ?? "database";
  return {
    id,
    type,
    status: "completed",
    description: `backup ${counter}`,
    requested_by: "admin",
    trigger: "api",
    schedule: null,
    archive: false,
    parent_id: null,
    storage_path: `2025-12-01/${id}`,
    size_bytes: 1536,
    error: null,
    created_at: "2025-12-01T10:00:00Z",
    started_at: "2025-12-01T10:00:01Z",
    completed_at: "2025-12-01T10:00:09Z",
    updated_at: "2025-12-01T10:00:09Z",
    erased_at: null,
    progress: { parts_completed: 1, parts_total: 1 },
    parts: [
      {
        part: type === "files" || type === "incremental" ? "files" : "database",
        status: "completed",
        file_name: "database.zip",
        size_bytes: 1536,
        sha256: "ab".repeat(32),
        item_count: 3,
        progress: null,
        error: null,
        attempts: 1,
        started_at: "2025-12-01T10:00:01Z",
        completed_at: "2025-12-01T10:00:09Z",
      },
    ],
    verification: { status: "verified", checked_at: "2025-12-01T10:01:00Z", error: null, checks: [] },
    offsite: null,
    warning_count: 0,
    warnings: [],
    ...overrides,
  };
}

export function aPage(backups: Backup[], total = backups.length, limit = 25, offset = 0) {
  return { backups, total, limit, offset };
}

export function someStats(overrides: Partial<Stats> = {}): Stats {
  return {
    total: 5,
    by_type: { full: 1, database: 3, files: 1 },
    by_status: { completed: 4, failed: 1 },
    bytes_total: 5 * 1024 * 1024,
    bytes_by_type: { full: 3 * 1024 * 1024, database: 1024 * 1024, files: 1024 * 1024 },
    last_success: {
      full: { id: "f", completed_at: new Date(Date.now() - 3 * 3_600_000).toISOString(), size_bytes: 3 * 1024 * 1024 },
      database: { id: "d", completed_at: new Date(Date.now() - 72 * 3_600_000).toISOString(), size_bytes: 1024 * 1024 },
      files: null,
    },
    last_30_days: { completed: 4, failed: 1, success_rate: 0.8 },
    storage: {
      used_bytes: 5 * 1024 * 1024,
      filesystem_total_bytes: 100 * 1024 ** 3,
      filesystem_free_bytes: 40 * 1024 ** 3,
    },
    verification: { verified: 3, failed: 1, never: 0 },
    ...overrides,
  };
}

export function aSchedule(document: Partial<ScheduleDocument> = {}, revision = 3): StoredDocument<ScheduleDocument> {
  const full: ScheduleDocument = {
    timezone: "UTC",
    schedules: [
      {
        name: "daily",
        type: "incremental",
        cron: "0 2 * * 1-6",
        description: "Every day",
        enabled: true,
        archive: false,
      },
      { name: "weekly-full", type: "full", cron: "0 2 * * 0", description: "", enabled: false, archive: false },
    ],
    ...document,
  };
  const soon = (hours: number) => new Date(Date.now() + hours * 3_600_000).toISOString();
  return {
    document: full,
    revision,
    updated_by: "admin",
    updated_at: "2025-12-01T09:00:00Z",
    next_fire_times: Object.fromEntries(
      full.schedules.filter((entry) => entry.enabled).map((entry) => [entry.name, [soon(5), soon(29), soon(53)]]),
    ),
  };
}

export function someSettings(revision = 7): StoredDocument<SettingsDocument> {
  return {
    document: {
      retention: { keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 12, keep_yearly: 0, max_age_days: null },
      encryption: { enabled: true },
      compression: { level: 3 },
      notifications: { missing_after_minutes: 60, webhooks: [] },
      database: { keep_definers: true },
      verification: { after_backup: true, restore_drill_cron: "0 4 * * 6", drill_budget_minutes: 60 },
      restore_limits: { max_total_bytes: 2 ** 40, max_entries: 10_000_000, max_compression_ratio: 1100 },
      exclude: [],
    },
    revision,
    updated_by: "admin",
    updated_at: "2025-12-01T09:00:00Z",
    next_fire_times: null,
  };
}

export function aRestore(overrides: Partial<Restore> = {}): Restore {
  return {
    id: "99999999-1111-4222-8333-444444444444",
    backup_id: "b",
    status: "pending",
    parts: [
      {
        part: "files",
        status: "pending",
        progress: null,
        error: null,
        attempts: 0,
        started_at: null,
        completed_at: null,
      },
    ],
    target: { kind: "directory", directory: "/restores/x", database: null, replace: false },
    tables: [],
    paths: [],
    safety_backup: false,
    safety_backup_id: null,
    requested_by: "admin",
    error: null,
    created_at: "2025-12-01T11:00:00Z",
    started_at: null,
    completed_at: null,
    updated_at: "2025-12-01T11:00:00Z",
    ...overrides,
  };
}
