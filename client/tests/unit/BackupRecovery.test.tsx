import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { BackupRecovery } from "../../src/app/_components/admin/BackupRecovery";
import { BackupApiProvider, NOT_ADMIN_MESSAGE, TOKEN_STORAGE_KEY } from "../../src/lib/BackupApiProvider";
import { aBackup, aPage, apiError, aSchedule, fakeGateway, json, someSettings, someStats } from "./gateway";
import { renderSignedIn } from "./render";

const ADMIN = "admin-jwt";
const VIEWER = "viewer-jwt";

/** A gateway that knows one admin token and one valid token without the admin role. */
function gatewayWithTokens() {
  const backups = [aBackup({ description: "seeded database backup" })];
  const guard = (handler: () => Response) => (request: { headers: Headers }) => {
    const auth = request.headers.get("Authorization");
    if (auth === `Bearer ${ADMIN}`) return handler();
    if (auth === `Bearer ${VIEWER}`) return apiError(403, "forbidden", "this token does not carry the admin role");
    return apiError(401, "unauthorized", "the token's signature is not valid");
  };
  return fakeGateway({
    "GET /api/admin/backup/list": guard(() => json(200, aPage(backups))),
    "GET /api/admin/backup/stats": guard(() => json(200, someStats())),
    "GET /api/admin/backup/schedule": guard(() => json(200, aSchedule())),
    "GET /api/admin/backup/settings": guard(() => json(200, someSettings())),
  });
}

function renderPage() {
  const user = userEvent.setup();
  render(
    <BackupApiProvider>
      <BackupRecovery />
    </BackupApiProvider>,
  );
  return user;
}

describe("signing in", () => {
  it("asks for an admin token when there is none, without calling the API", async () => {
    const gateway = gatewayWithTokens();
    renderPage();
    expect(await screen.findByLabelText("Admin token")).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Sign in" })).toBeDisabled();
    expect(gateway.requests).toHaveLength(0);
  });

  it("says an account without the admin role is not an administrator, and lets another token in", async () => {
    gatewayWithTokens();
    const user = renderPage();
    await user.type(await screen.findByLabelText("Admin token"), VIEWER);
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByText(NOT_ADMIN_MESSAGE)).toBeInTheDocument();
    expect(screen.getByRole("heading", { name: "Not an administrator" })).toBeInTheDocument();
    expect(screen.queryByRole("heading", { name: "Backups" })).not.toBeInTheDocument();

    await user.type(screen.getByLabelText("Admin token"), ADMIN);
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByRole("heading", { name: "Backups" })).toBeInTheDocument();
    expect(screen.getByRole("heading", { name: "Statistics" })).toBeInTheDocument();
    expect(screen.getByRole("heading", { name: "Schedule" })).toBeInTheDocument();
    expect(window.sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBe(ADMIN);
  });

  it("strips a pasted 'Bearer ' prefix from the token", async () => {
    gatewayWithTokens();
    const user = renderPage();
    await user.type(await screen.findByLabelText("Admin token"), `Bearer ${ADMIN}`);
    await user.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByRole("heading", { name: "Backups" })).toBeInTheDocument();
  });

  it("brings the sign-in back, saying why, when the token stops being accepted", async () => {
    const gateway = gatewayWithTokens();
    window.sessionStorage.setItem(TOKEN_STORAGE_KEY, ADMIN);
    const user = renderPage();
    expect(await screen.findByRole("heading", { name: "Backups" })).toBeInTheDocument();
    await within(screen.getByRole("region", { name: "Backups" })).findByText("seeded database backup");

    gateway.on("GET /api/admin/backup/list", () => apiError(401, "unauthorized", "the token has expired"));
    await user.click(within(screen.getByRole("region", { name: "Backups" })).getByRole("button", { name: "Refresh" }));
    expect(await screen.findByLabelText("Admin token")).toBeInTheDocument();
    expect(screen.getByRole("alert")).toHaveTextContent("the token has expired");
    expect(window.sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBeNull();
  });

  it("signs out, forgetting the token", async () => {
    gatewayWithTokens();
    window.sessionStorage.setItem(TOKEN_STORAGE_KEY, ADMIN);
    const user = renderPage();
    await user.click(await screen.findByRole("button", { name: "Sign out" }));
    expect(await screen.findByLabelText("Admin token")).toBeInTheDocument();
    expect(window.sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBeNull();
  });

  it("takes the token a host dashboard hands over, and asks for none", async () => {
    const gateway = gatewayWithTokens();
    render(
      <BackupApiProvider getToken={() => ADMIN} baseUrl="https://backup.example">
        <BackupApiProvider>
          <BackupRecovery />
        </BackupApiProvider>
      </BackupApiProvider>,
    );
    expect(await screen.findByRole("heading", { name: "Backups" })).toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Sign out" })).not.toBeInTheDocument();
    await waitFor(() => expect(gateway.requests.length).toBeGreaterThan(1));
    expect(gateway.requests.every((r) => r.url.origin === "https://backup.example")).toBe(true);
  });

  it("keeps a section that fails to render to itself, saying so in words", async () => {
    vi.spyOn(console, "warn").mockImplementation(() => {});
    vi.spyOn(console, "error").mockImplementation(() => {});
    fakeGateway({
      "GET /api/admin/backup/list": () => json(200, aPage([])),
      // An answer of a shape the page does not expect: no `storage`, no `last_30_days`.
      "GET /api/admin/backup/stats": () => json(200, { total: 1 }),
      "GET /api/admin/backup/schedule": () => json(200, aSchedule()),
      "GET /api/admin/backup/settings": () => json(200, someSettings()),
    });
    renderSignedIn(<BackupRecovery />);
    expect(await screen.findByText("The Statistics section could not be shown.")).toBeInTheDocument();
    expect(await screen.findByRole("heading", { name: "Backups" })).toBeInTheDocument();
    expect(screen.getByRole("heading", { name: "Schedule" })).toBeInTheDocument();
  });

  it("shows the sections' errors in words when the gateway cannot be reached", async () => {
    fakeGateway({
      "GET /api/admin/backup/list": () =>
        apiError(503, "unavailable", "the catalog database does not answer; try again shortly"),
      "GET /api/admin/backup/stats": () =>
        apiError(503, "unavailable", "the catalog database does not answer; try again shortly"),
      "GET /api/admin/backup/schedule": () =>
        apiError(503, "unavailable", "the catalog database does not answer; try again shortly"),
      "GET /api/admin/backup/settings": () =>
        apiError(503, "unavailable", "the catalog database does not answer; try again shortly"),
    });
    renderSignedIn(<BackupRecovery />);
    expect(await screen.findByText("The backups could not be loaded.")).toBeInTheDocument();
    expect(await screen.findByText("The statistics could not be loaded.")).toBeInTheDocument();
    expect(await screen.findByText("The schedule could not be loaded.")).toBeInTheDocument();
    expect(screen.getAllByText(/the catalog database does not answer/).length).toBeGreaterThanOrEqual(3);
  });
});
