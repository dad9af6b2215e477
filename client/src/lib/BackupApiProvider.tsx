"use client";

/**
 * Who is signed in, and the API client that carries their token.
 *
 * Standalone, the page keeps the admin token in sessionStorage under TOKEN_STORAGE_KEY (gone when the
 * tab closes; never in a cookie, so no other request carries it). A host dashboard that has its own
 * sign-in either writes its admin JWT under that key, or wraps the page in this provider with its own
 * `getToken` (and `baseUrl` when the gateway is on another origin): see client/README.md.
 */

import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from "react";

import { ApiError, createBackupApi, type BackupApi, type BackupApiConfig } from "./backupApi";

/** The sessionStorage key of the admin token; a host dashboard may set it before opening the page. */
export const TOKEN_STORAGE_KEY = "backup-recovery.admin-token";

/** The gateway's origin when the page is built to call another one (NEXT_PUBLIC_BACKUP_API_BASE_URL). */
const DEFAULT_BASE_URL = process.env.NEXT_PUBLIC_BACKUP_API_BASE_URL ?? "";

export type AuthStatus = "checking" | "signed-out" | "forbidden" | "signed-in";

export interface AuthState {
  status: AuthStatus;
  /** Why the page is signed out or refused (an expired token, a token without the admin role). */
  message: string | null;
}

export interface BackupSession {
  api: BackupApi;
  auth: AuthState;
  /** Whether the page asks for the token itself (false when a host dashboard hands it over). */
  canSignIn: boolean;
  signIn: (token: string) => Promise<void>;
  signOut: () => void;
}

const SessionContext = createContext<BackupSession | null>(null);

export interface BackupApiProviderProps {
  /** The gateway's origin; "" (the default) for the page's own. */
  baseUrl?: string;
  /** The host dashboard's admin token; without it, the page asks for one and keeps it in sessionStorage. */
  getToken?: BackupApiConfig["getToken"];
  children: ReactNode;
}

function storedToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_STORAGE_KEY);
  } catch {
    // Storage disabled (a privacy setting): the token then lives as long as the page does.
    return null;
  }
}

function storeToken(token: string | null): void {
  try {
    if (token === null) window.sessionStorage.removeItem(TOKEN_STORAGE_KEY);
    else window.sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
  } catch {
    // See storedToken.
  }
}

export const NOT_ADMIN_MESSAGE =
  "This account is not an administrator: its token does not carry the admin role. Sign in with an admin token, or ask an administrator for access.";

function messageFor(error: ApiError): string {
  if (error.isForbidden) return NOT_ADMIN_MESSAGE;
  return `The token was not accepted (${error.message}). Sign in again.`;
}

/**
 * Gives the page below it its API client and sign-in state. A provider inside another one defers to
 * the outer: the page wraps itself in one, so that it works alone, and a host dashboard's own
 * provider (with its token) higher up takes precedence.
 */
export function BackupApiProvider(props: BackupApiProviderProps) {
  const outer = useContext(SessionContext);
  return outer ? <>{props.children}</> : <SessionRoot {...props} />;
}

function SessionRoot({ baseUrl = DEFAULT_BASE_URL, getToken, children }: BackupApiProviderProps) {
  const canSignIn = getToken === undefined;
  // The token typed in this tab; kept in memory too, for browsers that refuse sessionStorage.
  const tokenRef = useRef<string | null>(null);
  const [auth, setAuth] = useState<AuthState>({ status: "checking", message: null });

  const onAuthError = useCallback(
    (error: ApiError) => {
      // A token refused, or one without the admin role, is of no use here: the next visit asks afresh.
      if (canSignIn) {
        tokenRef.current = null;
        storeToken(null);
      }
      setAuth({ status: error.isForbidden ? "forbidden" : "signed-out", message: messageFor(error) });
    },
    [canSignIn],
  );

  const api = useMemo(
    () =>
      createBackupApi({
        baseUrl,
        getToken: getToken ?? (() => tokenRef.current ?? storedToken()),
        onAuthError,
      }),
    [baseUrl, getToken, onAuthError],
  );

  /** Asks the gateway whether the current token is an admin's: the cheapest admin request. */
  const check = useCallback(async () => {
    try {
      await api.listBackups({ limit: 1 });
      setAuth({ status: "signed-in", message: null });
    } catch (error) {
      // 401 and 403 reached onAuthError already; anything else is not a verdict on the token.
      // Otherwise (gateway unreachable, catalog down) the sections show what failed, in words.
      if (error instanceof ApiError && (error.isUnauthorized || error.isForbidden)) return;
      setAuth({ status: "signed-in", message: null });
    }
  }, [api]);

  useEffect(() => {
    // On load: a token from an earlier sign-in in this tab, or from the host, is tried at once.
    const hasToken = canSignIn ? storedToken() !== null : true;
    if (!hasToken) {
      setAuth({ status: "signed-out", message: null });
      return;
    }
    void check();
  }, [canSignIn, check]);

  const signIn = useCallback(
    async (token: string) => {
      const trimmed = token.trim().replace(/^Bearer\s+/i, "");
      tokenRef.current = trimmed;
      storeToken(trimmed);
      setAuth({ status: "checking", message: null });
      await check();
    },
    [check],
  );

  const signOut = useCallback(() => {
    tokenRef.current = null;
    storeToken(null);
    setAuth({ status: "signed-out", message: "You are signed out." });
  }, []);

  const session = useMemo<BackupSession>(
    () => ({ api, auth, canSignIn, signIn, signOut }),
    [api, auth, canSignIn, signIn, signOut],
  );
  return <SessionContext.Provider value={session}>{children}</SessionContext.Provider>;
}

/** The session of the nearest BackupApiProvider. */
export function useBackupSession(): BackupSession {
  const session = useContext(SessionContext);
  if (session === null) throw new Error("useBackupSession needs a <BackupApiProvider> around it");
  return session;
}

/** The API client of the nearest BackupApiProvider. */
export function useBackupApi(): BackupApi {
  return useBackupSession().api;
}
