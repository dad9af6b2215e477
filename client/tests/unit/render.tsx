import { render, type RenderResult } from "@testing-library/react";
import userEvent, { type UserEvent } from "@testing-library/user-event";
import type { ReactElement } from "react";
import { vi } from "vitest";

import { BackupApiProvider, TOKEN_STORAGE_KEY } from "../../src/lib/BackupApiProvider";

/** Renders `ui` signed in (a token in sessionStorage, as after the sign-in form) against the stubbed fetch. */
export function renderSignedIn(
  ui: ReactElement,
  { token = "admin-token", fakeTimers = false }: { token?: string | null; fakeTimers?: boolean } = {},
): RenderResult & { user: UserEvent } {
  if (token !== null) window.sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
  const user = userEvent.setup(fakeTimers ? { advanceTimers: vi.advanceTimersByTime.bind(vi) } : {});
  return { user, ...render(<BackupApiProvider>{ui}</BackupApiProvider>) };
}
