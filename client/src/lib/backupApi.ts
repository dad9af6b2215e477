/**
 * The page's one door to the gateway's admin API (`/api/admin/backup/…`).
 *
 * Every type here comes from `api-types.ts`, which `npm run gen:api` generates from the gateway's
 * OpenAPI document (`npm run lint` fails while the two drift), so a change of the API shows up as a
 * compile error rather than as a blank cell at run time.
 */

import type { components, operations } from "./api-types";

type Schemas = components["schemas"];

export type Backup = Schemas["BackupOut"];
export type BackupDetail = Schemas["BackupDetailOut"];
export type BackupPage = Schemas["BackupPage"];
export type BackupType = Schemas["BackupType"];
export type BackupStatus = Schemas["BackupStatus"];
export type BackupPartName = Schemas["BackupPart"];
export type BackupPartState = Schemas["PartOut"];
export type Verification = Schemas["VerificationOut"];
export type VerificationStatus = Schemas["VerificationStatus"];
export type Restore = Schemas["RestoreOut"];
export type RestorePage = Schemas["RestorePage"];
export type RestorePartState = Schemas["RestorePartOut"];
export type RestoreStatus = Schemas["RestoreStatus"];
export type Stats = Schemas["Stats"];
export type ScheduleDocument = Schemas["ScheduleDocument"];
export type ScheduleEntry = Schemas["ScheduleEntry"];
export type SettingsDocument = Schemas["SettingsDocument"];
export type RetentionPolicy = Schemas["RetentionPolicy"];
export type RetentionPreview = Schemas["RetentionPreview"];

export type ListBackupsQuery = NonNullable<operations["backup.list"]["parameters"]["query"]>;
export type ListRestoresQuery = NonNullable<operations["restore.list"]["parameters"]["query"]>;

// The generator marks fields that have a default as required, which is right for answers (the gateway
// always sends them) but not for requests, where a default is exactly what may be left out.
export type CreateBackupRequest = Pick<Schemas["CreateBackupRequest"], "type"> &
  Partial<Omit<Schemas["CreateBackupRequest"], "type">>;
export type RestoreTargetRequest = Partial<Schemas["TargetIn"]>;
export type RestoreRequest = Pick<Schemas["RestoreRequest"], "confirm"> &
  Partial<Omit<Schemas["RestoreRequest"], "confirm" | "target">> & { target?: RestoreTargetRequest | null };

/** A stored document (schedule or settings) as the gateway answers it, with its document typed. */
export type StoredDocument<D> = Omit<Schemas["DocumentOut"], "document"> & { document: D };

/** Every value of each enumeration, in the order the page shows them; the checks below fail to
 * compile when the API gains or loses a value, so no option can silently go missing. */
export const BACKUP_TYPES = ["full", "database", "files", "incremental"] as const satisfies readonly BackupType[];
export const BACKUP_STATUSES = [
  "pending",
  "running",
  "completed",
  "failed",
  "deleting",
  "deleted",
] as const satisfies readonly BackupStatus[];
export const VERIFICATION_STATUSES = ["pending", "verified", "failed"] as const satisfies readonly VerificationStatus[];
export const BACKUP_PARTS = ["database", "files"] as const satisfies readonly BackupPartName[];
type Exhaustive<Union, Listed> = [Exclude<Union, Listed>] extends [never] ? true : never;
const typesListed: Exhaustive<BackupType, (typeof BACKUP_TYPES)[number]> = true;
const statusesListed: Exhaustive<BackupStatus, (typeof BACKUP_STATUSES)[number]> = true;
const verificationsListed: Exhaustive<VerificationStatus, (typeof VERIFICATION_STATUSES)[number]> = true;
const partsListed: Exhaustive<BackupPartName, (typeof BACKUP_PARTS)[number]> = true;
void [typesListed, statusesListed, verificationsListed, partsListed];

/** The parts a backup of each type holds (the design's table of backup types). */
export const PARTS_OF_TYPE: Record<BackupType, readonly BackupPartName[]> = {
  full: ["database", "files"],
  database: ["database"],
  files: ["files"],
  incremental: ["files"],
};

/** A backup in one of these states will change without anyone asking: worth watching. */
export function isBackupActive(backup: Pick<Backup, "status">): boolean {
  return backup.status === "pending" || backup.status === "running" || backup.status === "deleting";
}

export function isRestoreFinished(restore: Pick<Restore, "status">): boolean {
  return restore.status === "completed" || restore.status === "failed";
}

// ---------------------------------------------------------------------------------------------
// Errors

/** One invalid field of a request, as the gateway names it (`schedules.2.cron`, `retention.keep_last`). */
export interface FieldError {
  field: string;
  message: string;
}

/**
 * A request the gateway refused, or that never reached it.
 *
 * `status` is the HTTP status (0 when the gateway could not be reached), `code` the machine-readable
 * code of the JSON error body (`forbidden`, `backup_has_dependents`, …) and `message` its sentence,
 * written for people: the page shows it as it is.
 */
export class ApiError extends Error {
  override readonly name = "ApiError";

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: readonly FieldError[] = [],
    /** Seconds the gateway asked to wait before trying again (503 with Retry-After). */
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
  }

  /** No valid credentials: the token is missing, expired, or not one this gateway signed. */
  get isUnauthorized(): boolean {
    return this.status === 401;
  }

  /** Valid credentials without the admin role. */
  get isForbidden(): boolean {
    return this.status === 403;
  }

  /** Worth another try as it is: the gateway was unreachable, restarting or briefly overloaded. */
  get isTransient(): boolean {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }

  /**
   * The field errors below `prefix`, keyed by the rest of their path: with prefix `schedules.3.`,
   * `schedules.3.cron` becomes `cron`. Without a prefix, every field error by its full path.
   */
  fieldErrors(prefix = ""): Record<string, string> {
    const found: Record<string, string> = {};
    for (const detail of this.details) {
      if (!detail.field.startsWith(prefix)) continue;
      const key = detail.field.slice(prefix.length);
      // Several errors of one field read as one sentence after another.
      found[key] = found[key] ? `${found[key]}; ${detail.message}` : detail.message;
    }
    return found;
  }

  /** The error a response carries: its JSON error body when it has one, its status line otherwise
   * (a proxy's HTML page, an empty 502), so there is always a sentence to show. */
  static async fromResponse(response: Response): Promise<ApiError> {
    const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
    let text = "";
    try {
      text = await response.text();
    } catch {
      // The body could not be read (connection cut): the status line still says what happened.
    }
    const body = parseJson(text);
    if (isErrorBody(body)) {
      const { code, message, details } = body.error;
      return new ApiError(response.status, code, message, fieldErrorsOf(details), retryAfter);
    }
    const reason = response.statusText || STATUS_WORDS[response.status] || "an error";
    return new ApiError(
      response.status,
      `http_${response.status}`,
      `The gateway answered ${response.status} ${reason}${response.status >= 500 ? "; try again shortly" : ""}.`,
      [],
      retryAfter,
    );
  }
}

const STATUS_WORDS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  410: "Gone",
  412: "Precondition Failed",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

interface ErrorBodyShape {
  error: { code: string; message: string; details?: unknown };
}

function isErrorBody(value: unknown): value is ErrorBodyShape {
  if (!isRecord(value) || !isRecord(value.error)) return false;
  return typeof value.error.code === "string" && typeof value.error.message === "string";
}

function fieldErrorsOf(details: unknown): FieldError[] {
  if (!Array.isArray(details)) return [];
  return details.flatMap((item: unknown) =>
    isRecord(item) && typeof item.field === "string" && typeof item.message === "string"
      ? [{ field: item.field, message: item.message }]
      : [],
  );
}

function parseRetryAfter(header: string | null): number | null {
  if (header === null) return null;
  const seconds = Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

/** What went wrong, in words a person can act on, whatever was thrown. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error && error.message) return error.message;
  return "Something went wrong; try again.";
}

/** Whether `error` is the rejection of an aborted request or wait (a closed dialog, say): not worth showing. */
export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}

// ---------------------------------------------------------------------------------------------
// The client

export interface BackupApiConfig {
  /** Where the gateway is: "" (the default) for the page's own origin, or e.g. "https://backup.example". */
  baseUrl: string;
  /** The admin bearer token, or null when there is none (the page then asks for one). */
  getToken: () => string | null | Promise<string | null>;
  /** Called with every 401 and 403 before it is thrown, so that the page can ask to sign in again. */
  onAuthError?: (error: ApiError) => void;
  /** The fetch to use; the global one by default (tests stub that one). */
  fetch?: typeof fetch;
}

interface RequestOptions {
  query?: Record<string, string | number | readonly string[] | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** The client createBackupApi makes: one method per admin API operation the page uses. */
export type BackupApi = ReturnType<typeof createBackupApi>;

const API = "/api/admin/backup";

export function createBackupApi(config: BackupApiConfig) {
  const base = config.baseUrl.replace(/\/+$/, "");

  async function send(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const token = await config.getToken();
    if (!token) {
      const error = new ApiError(401, "unauthorized", "Sign in with an admin token to use this page.");
      config.onAuthError?.(error);
      throw error;
    }
    const headers: Record<string, string> = {
      Accept: "application/json",
      Authorization: `Bearer ${token}`,
      ...options.headers,
    };
    let body: string | undefined;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const doFetch = config.fetch ?? globalThis.fetch;
    let response: Response;
    try {
      response = await doFetch(`${base}${path}${queryString(options.query)}`, {
        method,
        headers,
        body,
        signal: options.signal,
        // The token travels in the Authorization header only: no cookie is needed or wanted.
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ApiError(
        0,
        "unreachable",
        "The backup gateway could not be reached; check the connection and try again.",
      );
    }
    if (!response.ok) {
      const error = await ApiError.fromResponse(response);
      if (error.isUnauthorized || error.isForbidden) config.onAuthError?.(error);
      throw error;
    }
    return response;
  }

  async function json<T>(method: string, path: string, options?: RequestOptions): Promise<T> {
    const response = await send(method, path, options);
    const parsed = parseJson(await response.text());
    if (parsed === undefined) {
      throw new ApiError(response.status, "bad_response", "The gateway's answer could not be read as JSON.");
    }
    // The gateway builds every answer from the models the OpenAPI document (and so T) is made of.
    return parsed as T;
  }

  const path = (id: string) => `${API}/${encodeURIComponent(id)}`;

  return {
    listBackups(query: ListBackupsQuery = {}, signal?: AbortSignal): Promise<BackupPage> {
      return json("GET", `${API}/list`, { query: { ...query }, signal });
    },

    async getBackup(id: string, signal?: AbortSignal): Promise<BackupDetail> {
      return (await json<Schemas["BackupEnvelope"]>("GET", path(id), { signal })).backup;
    },

    /** Requests a backup; the idempotency key makes a retried click return the same backup. */
    async createBackup(request: CreateBackupRequest, idempotencyKey?: string): Promise<BackupDetail> {
      const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : undefined;
      return (await json<Schemas["BackupEnvelope"]>("POST", `${API}/create`, { body: request, headers })).backup;
    },

    async deleteBackup(id: string): Promise<BackupDetail> {
      return (await json<Schemas["BackupEnvelope"]>("DELETE", path(id))).backup;
    },

    async verifyBackup(id: string): Promise<BackupDetail> {
      return (await json<Schemas["BackupEnvelope"]>("POST", `${path(id)}/verify`)).backup;
    },

    /** The archive's response, to be streamed to a file; the Authorization header rules out a plain link. */
    downloadBackup(id: string, signal?: AbortSignal): Promise<Response> {
      return send("GET", `${path(id)}/download`, { signal, headers: { Accept: "application/zip" } });
    },

    async restoreBackup(id: string, request: RestoreRequest): Promise<Restore> {
      return (await json<Schemas["RestoreEnvelope"]>("POST", `${path(id)}/restore`, { body: request })).restore;
    },

    async getRestore(id: string, signal?: AbortSignal): Promise<Restore> {
      const url = `${API}/restores/${encodeURIComponent(id)}`;
      return (await json<Schemas["RestoreEnvelope"]>("GET", url, { signal })).restore;
    },

    listRestores(query: ListRestoresQuery = {}, signal?: AbortSignal): Promise<RestorePage> {
      return json("GET", `${API}/restores`, { query: { ...query }, signal });
    },

    getStats(signal?: AbortSignal): Promise<Stats> {
      return json("GET", `${API}/stats`, { signal });
    },

    getRetentionPreview(signal?: AbortSignal): Promise<RetentionPreview> {
      return json("GET", `${API}/retention`, { signal });
    },

    getSchedule(signal?: AbortSignal): Promise<StoredDocument<ScheduleDocument>> {
      return json("GET", `${API}/schedule`, { signal });
    },

    /** Replaces the whole schedule, on `revision` only (412 when someone changed it meanwhile). */
    putSchedule(document: ScheduleDocument, revision: number): Promise<StoredDocument<ScheduleDocument>> {
      return json("PUT", `${API}/schedule`, { body: document, headers: ifMatch(revision) });
    },

    getSettings(signal?: AbortSignal): Promise<StoredDocument<SettingsDocument>> {
      return json("GET", `${API}/settings`, { signal });
    },

    /** Changes the keys of `patch` (a JSON merge patch) on `revision` only. */
    patchSettings(patch: DeepPartial<SettingsDocument>, revision: number): Promise<StoredDocument<SettingsDocument>> {
      return json("PATCH", `${API}/settings`, { body: patch, headers: ifMatch(revision) });
    },
  };
}

/** A JSON merge patch of T: any key may be left out, and null resets one to its default. */
export type DeepPartial<T> = {
  [K in keyof T]?: T[K] extends readonly unknown[] ? T[K] : T[K] extends object ? DeepPartial<T[K]> : T[K] | null;
};

function ifMatch(revision: number): Record<string, string> {
  return { "If-Match": `"${revision}"` };
}

function queryString(query: RequestOptions["query"]): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value === undefined) continue;
    if (Array.isArray(value)) {
      // The API takes a list as one comma-separated value (`type=full,files`), and none as no filter.
      if (value.length > 0) params.set(name, value.join(","));
    } else {
      params.set(name, String(value));
    }
  }
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** The file name a download's Content-Disposition gives, or a sensible one. */
export function downloadFileName(response: Response, backupId: string): string {
  const header = response.headers.get("Content-Disposition") ?? "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header);
  const name = match?.[1] ? decodeURIComponent(match[1]) : "";
  // Only the last path segment, so a hostile header cannot suggest a path.
  return name.split(/[\\/]/).pop() || `backup-${backupId}.zip`;
}

// ---------------------------------------------------------------------------------------------
// Polling: backups, restores and verifications run for seconds to hours, and the API has no push.

export interface PollOptions<T> {
  /** First wait between two reads, in ms. */
  intervalMs?: number;
  /** The wait grows by `backoff` after each read, up to this. */
  maxIntervalMs?: number;
  backoff?: number;
  signal?: AbortSignal;
  /** Every value read, the last one included. */
  onUpdate?: (value: T) => void;
  /** A transient failure (gateway unreachable or restarting): the poll goes on after it. */
  onRetry?: (error: ApiError) => void;
}

export const POLL_DEFAULTS = { intervalMs: 1000, maxIntervalMs: 5000, backoff: 1.5 } as const;

/**
 * Reads with `load` until `isDone` holds, then resolves with that value. Transient failures (the
 * gateway restarting, a dropped connection) are waited out, since a backup goes on without the page;
 * any other failure, or an abort through `signal`, rejects.
 */
export async function pollUntil<T>(
  load: (signal?: AbortSignal) => Promise<T>,
  isDone: (value: T) => boolean,
  options: PollOptions<T> = {},
): Promise<T> {
  const { intervalMs, maxIntervalMs, backoff } = { ...POLL_DEFAULTS, ...definedOnly(options) };
  const { signal } = options;
  let wait: number = intervalMs;
  for (;;) {
    signal?.throwIfAborted();
    try {
      const value = await load(signal);
      options.onUpdate?.(value);
      if (isDone(value)) return value;
    } catch (error) {
      if (!(error instanceof ApiError) || !error.isTransient) throw error;
      options.onRetry?.(error);
      if (error.retryAfterSeconds !== null) wait = Math.max(wait, error.retryAfterSeconds * 1000);
    }
    await sleep(wait, signal);
    wait = Math.min(wait * backoff, maxIntervalMs);
  }
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Resolves after `ms`, or rejects with an AbortError as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason instanceof DOMException ? signal.reason : new DOMException("Aborted", "AbortError"));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason instanceof DOMException ? signal.reason : new DOMException("Aborted", "AbortError"));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Follows a backup until it is no longer pending, running or being deleted. */
export function watchBackup(api: BackupApi, id: string, options?: PollOptions<BackupDetail>): Promise<BackupDetail> {
  return pollUntil(
    (signal) => api.getBackup(id, signal),
    (backup) => !isBackupActive(backup),
    options,
  );
}

/** Follows a restore to its end, completed or failed. */
export function watchRestore(api: BackupApi, id: string, options?: PollOptions<Restore>): Promise<Restore> {
  return pollUntil((signal) => api.getRestore(id, signal), isRestoreFinished, options);
}

/**
 * Follows a verification asked for when the backup's latest one ended at `previousCheckedAt` (null:
 * never verified) until a newer one has ended. A backup keeps its previous verdict while it is checked
 * again, so the verdict alone cannot tell the new result from the old.
 */
export function watchVerification(
  api: BackupApi,
  id: string,
  previousCheckedAt: string | null,
  options?: PollOptions<BackupDetail>,
): Promise<BackupDetail> {
  return pollUntil(
    (signal) => api.getBackup(id, signal),
    ({ verification }) =>
      verification.status !== "pending" &&
      verification.checked_at !== null &&
      verification.checked_at !== previousCheckedAt,
    options,
  );
}
