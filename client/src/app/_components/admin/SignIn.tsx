"use client";

/** Asks for the admin token; says why when one was refused or lacks the admin role. */

import { useId, useState, type FormEvent } from "react";

import { useBackupSession } from "../../../lib/BackupApiProvider";

import styles from "./admin.module.css";

export function SignIn() {
  const { auth, canSignIn, signIn } = useBackupSession();
  const [token, setToken] = useState("");
  const checking = auth.status === "checking";
  const headingId = useId();
  const tokenId = useId();

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!token.trim()) return;
    await signIn(token);
    // The field is emptied once the token is handed over: it stays in this tab's session only.
    setToken("");
  }

  return (
    <section className={styles.signIn} aria-labelledby={headingId}>
      <h2 id={headingId}>{auth.status === "forbidden" ? "Not an administrator" : "Sign in"}</h2>
      {auth.message ? (
        <p role="alert" className={auth.status === "forbidden" ? styles.error : styles.notice}>
          {auth.message}
        </p>
      ) : null}
      {canSignIn ? (
        <form onSubmit={(event) => void submit(event)}>
          <div className={styles.field}>
            <label htmlFor={tokenId}>Admin token</label>
            <input
              id={tokenId}
              type="password"
              value={token}
              onChange={(e) => setToken(e.target.value)}
              autoComplete="off"
              spellCheck={false}
              aria-describedby={`${tokenId}-hint`}
              required
            />
            <p id={`${tokenId}-hint`} className={styles.hint}>
              A JWT with the admin role, e.g. from <code>backupctl token</code>. It is kept in this browser tab only,
              until you sign out or close it.
            </p>
          </div>
          <div className={styles.formActions}>
            <button type="submit" className={styles.buttonPrimary} disabled={checking || !token.trim()}>
              {checking ? "Checking…" : "Sign in"}
            </button>
          </div>
        </form>
      ) : (
        <p className={styles.hint}>
          Your dashboard signs you in to this page; sign in there with an administrator account.
        </p>
      )}
    </section>
  );
}
