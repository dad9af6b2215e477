import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import {
  ApiError,
  createBackupApi,
  downloadFileName,
  pollUntil,
  watchBackup,
  watchRestore,
  watchVerification,
  type BackupApi,
} from "../../src/lib/backupApi";
import { aBackup, apiError, aRestore, aSchedule, fakeGateway, json } from "./gateway";

function apiWith(
  token: string | null = "admin-token",
  onAuthError = vi.fn(),
): { api: BackupApi; onAuthError: typeof onAuthError } {
  return { api: createBackupApi({ baseUrl: "", getToken: () => token, onAuthError }), onAuthError };
}

describe("ApiError", () => {
  it("reads the code, message and field details of the gateway's JSON error body", async () => {
    const error = await ApiError.fromResponse(
      apiError(400, "invalid_request", "schedules.0.cron: invalid cron expression", [
        { field: "schedules.0.cron", message: "invalid cron expression" },
        { field: "timezone", message: "unknown time zone 'Mars/Base'" },
      ]),
    );
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(400);
    expect(error.code).toBe("invalid_request");
    expect(error.message).toBe("schedules.0.cron: invalid cron expression");
    expect(error.fieldErrors("schedules.0.")).toEqual({ cron: "invalid cron expression" });
    expect(error.fieldErrors()).toEqual({
      "schedules.0.cron": "invalid cron expression",
      timezone: "unknown time zone 'Mars/Base'",
    });
  });

  it("says what happened in words when the body is not the gateway's (a proxy's HTML page)", async () => {
    const error = await ApiError.fromResponse(
      new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }),
    );
    expect(error.code).toBe("http_502");
    expect(error.message).toBe("The gateway answered 502 Bad Gateway; try again shortly.");
    expect(error.isTransient).toBe(true);
  });

  it("keeps the Retry-After of a 503", async () => {
    const response = json(
      503,
      { error: { code: "unavailable", message: "the catalog database does not answer" } },
      {
        "Retry-After": "5",
      },
    );
    const error = await ApiError.fromResponse(response);
    expect(error.retryAfterSeconds).toBe(5);
    expect(error.isTransient).toBe(true);
  });

  it("ignores details that are not field errors", async () => {
    const error = await ApiError.fromResponse(apiError(400, "invalid_request", "bad", [{ nope: 1 }, "text"]));
    expect(error.details).toEqual([]);
  });
});

describe("the API client", () => {
  it("sends the bearer token and joins list filters with commas", async () => {
    const gateway = fakeGateway({
      "GET /api/admin/backup/list": () => json(200, { backups: [], total: 0, limit: 10, offset: 20 }),
    });
    const { api } = apiWith();
    await api.listBackups({ type: ["full", "files"], status: ["completed"], limit: 10, offset: 20 });
    const [request] = gateway.to("GET /api/admin/backup/list");
    expect(request?.headers.get("Authorization")).toBe("Bearer admin-token");
    expect(request?.url.searchParams.get("type")).toBe("full,files");
    expect(request?.url.searchParams.get("status")).toBe("completed");
    expect(request?.url.searchParams.get("limit")).toBe("10");
    expect(request?.url.searchParams.get("offset")).toBe("20");
    expect(request?.url.searchParams.has("verification")).toBe(false);
  });

  it("calls the gateway at the configured base URL", async () => {
    const gateway = fakeGateway({ "GET /api/admin/backup/stats": () => json(200, {}) });
    const api = createBackupApi({ baseUrl: "https://backup.example/", getToken: () => "t" });
    await api.getStats();
    expect(gateway.requests[0]?.url.href).toBe("https://backup.example/api/admin/backup/stats");
  });

  it("asks to sign in without calling the gateway when there is no token", async () => {
    const gateway = fakeGateway();
    const { api, onAuthError } = apiWith(null);
    await expect(api.getStats()).rejects.toMatchObject({ status: 401, code: "unauthorized" });
    expect(onAuthError).toHaveBeenCalledOnce();
    expect(gateway.requests).toHaveLength(0);
  });

  it("reports a 401 and a 403 to the session before throwing them", async () => {
    fakeGateway({
      "GET /api/admin/backup/stats": () => apiError(401, "unauthorized", "the token has expired"),
      "GET /api/admin/backup/schedule": () => apiError(403, "forbidden", "this token does not carry the admin role"),
    });
    const { api, onAuthError } = apiWith();
    const expired = await api.getStats().catch((error: unknown) => error);
    expect(expired).toBeInstanceOf(ApiError);
    expect((expired as ApiError).isUnauthorized).toBe(true);
    const forbidden = await api.getSchedule().catch((error: unknown) => error);
    expect((forbidden as ApiError).isForbidden).toBe(true);
    expect(onAuthError.mock.calls.map(([error]) => (error as ApiError).status)).toEqual([401, 403]);
  });

  it("does not report other refusals to the session", async () => {
    fakeGateway({ "DELETE /api/admin/backup/:id": () => apiError(409, "backup_has_dependents", "needed by x") });
    const { api, onAuthError } = apiWith();
    await expect(api.deleteBackup("b")).rejects.toMatchObject({ status: 409, code: "backup_has_dependents" });
    expect(onAuthError).not.toHaveBeenCalled();
  });

  it("turns a network failure into an ApiError with status 0", async () => {
    vi.stubGlobal(
      "fetch",
      vi.fn(() => Promise.reject(new TypeError("Failed to fetch"))),
    );
    const { api } = apiWith();
    await expect(api.getStats()).rejects.toMatchObject({ status: 0, code: "unreachable", isTransient: true });
  });

  it("creates a backup with an idempotency key and returns the backup", async () => {
    const created = aBackup({ status: "pending" });
    const gateway = fakeGateway({ "POST /api/admin/backup/create": () => json(202, { backup: created }) });
    const { api } = apiWith();
    await expect(api.createBackup({ type: "database", description: "before upgrade" }, "key-1")).resolves.toEqual(
      created,
    );
    const [request] = gateway.requests;
    expect(request?.body).toEqual({ type: "database", description: "before upgrade" });
    expect(request?.headers.get("Idempotency-Key")).toBe("key-1");
    expect(request?.headers.get("Content-Type")).toBe("application/json");
  });

  it("saves the schedule on the revision it was read at (If-Match)", async () => {
    const stored = aSchedule({}, 4);
    const gateway = fakeGateway({ "PUT /api/admin/backup/schedule": () => json(200, stored) });
    const { api } = apiWith();
    await api.putSchedule(stored.document, 3);
    expect(gateway.requests[0]?.headers.get("If-Match")).toBe('"3"');
    expect(gateway.requests[0]?.body).toEqual(stored.document);
  });

  it("patches the settings with a merge patch and If-Match", async () => {
    const gateway = fakeGateway({ "PATCH /api/admin/backup/settings": () => json(200, {}) });
    const { api } = apiWith();
    await api.patchSettings({ retention: { keep_last: 5 } }, 7);
    expect(gateway.requests[0]?.body).toEqual({ retention: { keep_last: 5 } });
    expect(gateway.requests[0]?.headers.get("If-Match")).toBe('"7"');
  });

  it("names a download after its Content-Disposition, never with a path", () => {
    const named = (value: string) =>
      downloadFileName(new Response("", { headers: { "Content-Disposition": value } }), "abc");
    expect(named('attachment; filename="backup-abc.zip"')).toBe("backup-abc.zip");
    expect(named('attachment; filename="../../etc/passwd"')).toBe("passwd");
    expect(downloadFileName(new Response(""), "abc")).toBe("backup-abc.zip");
  });
});

describe("polling", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("reads until the value is done, waiting longer after each read", async () => {
    const values = [1, 2, 3, 4];
    const load = vi.fn(() => Promise.resolve(values.shift() ?? 4));
    const updates: number[] = [];
    const done = pollUntil(load, (value) => value === 4, {
      intervalMs: 1000,
      backoff: 2,
      maxIntervalMs: 3000,
      onUpdate: (value) => updates.push(value),
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(load).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(999);
    expect(load).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(load).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(2000); // 1000 × 2
    expect(load).toHaveBeenCalledTimes(3);
    await vi.advanceTimersByTimeAsync(3000); // capped at maxIntervalMs
    await expect(done).resolves.toBe(4);
    expect(updates).toEqual([1, 2, 3, 4]);
  });

  it("waits out a gateway that is restarting, and honours its Retry-After", async () => {
    let calls = 0;
    const onRetry = vi.fn();
    const load = vi.fn(async () => {
      calls += 1;
      if (calls === 1) throw new ApiError(503, "unavailable", "the catalog does not answer", [], 10);
      if (calls === 2) throw new ApiError(0, "unreachable", "no connection");
      return "done";
    });
    const done = pollUntil(load, (value) => value === "done", { intervalMs: 1000, onRetry });
    await vi.advanceTimersByTimeAsync(9_999);
    expect(load).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(load).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(5000);
    await expect(done).resolves.toBe("done");
    expect(onRetry).toHaveBeenCalledTimes(2);
  });

  it("stops at the first refusal that waiting will not fix", async () => {
    const load = vi.fn(() => Promise.reject(new ApiError(404, "not_found", "no backup with id x")));
    await expect(pollUntil(load, () => true)).rejects.toMatchObject({ status: 404 });
    expect(load).toHaveBeenCalledOnce();
  });

  it("stops when aborted, between two reads", async () => {
    const controller = new AbortController();
    const load = vi.fn(() => Promise.resolve(0));
    const done = pollUntil(load, () => false, { signal: controller.signal, intervalMs: 1000 });
    const outcome = expect(done).rejects.toMatchObject({ name: "AbortError" });
    await vi.advanceTimersByTimeAsync(500);
    controller.abort();
    await outcome;
    await vi.advanceTimersByTimeAsync(5000);
    expect(load).toHaveBeenCalledOnce();
  });

  it("follows a backup until it completes", async () => {
    const states = [
      aBackup({ id: "b1", status: "pending" }),
      aBackup({ id: "b1", status: "running" }),
      aBackup({ id: "b1", status: "completed" }),
    ];
    fakeGateway({ "GET /api/admin/backup/:id": () => json(200, { backup: states.shift() }) });
    const { api } = apiWith();
    const seen: string[] = [];
    const done = watchBackup(api, "b1", { intervalMs: 100, onUpdate: (backup) => seen.push(backup.status) });
    await vi.advanceTimersByTimeAsync(1000);
    await expect(done).resolves.toMatchObject({ status: "completed" });
    expect(seen).toEqual(["pending", "running", "completed"]);
  });

  it("follows a restore until it has failed", async () => {
    const states = [aRestore({ status: "running" }), aRestore({ status: "failed", error: "disk full" })];
    fakeGateway({ "GET /api/admin/backup/restores/:id": () => json(200, { restore: states.shift() }) });
    const { api } = apiWith();
    const done = watchRestore(api, "r1", { intervalMs: 100 });
    await vi.advanceTimersByTimeAsync(1000);
    await expect(done).resolves.toMatchObject({ status: "failed", error: "disk full" });
  });

  it("follows a verification until a newer one than the last has ended", async () => {
    const before = { status: "verified" as const, checked_at: "2025-12-01T10:00:00Z", error: null, checks: [] };
    const after = { status: "failed" as const, checked_at: "2025-12-02T10:00:00Z", error: "restore_drill", checks: [] };
    const states = [aBackup({ id: "b1", verification: before }), aBackup({ id: "b1", verification: after })];
    fakeGateway({ "GET /api/admin/backup/:id": () => json(200, { backup: states.shift() }) });
    const { api } = apiWith();
    const done = watchVerification(api, "b1", before.checked_at, { intervalMs: 100 });
    await vi.advanceTimersByTimeAsync(1000);
    await expect(done).resolves.toMatchObject({ verification: { status: "failed", error: "restore_drill" } });
  });
});
