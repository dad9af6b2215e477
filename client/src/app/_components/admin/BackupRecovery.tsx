"use client";

/**
 * The Backup & Recovery page's content: sign-in until an admin token is accepted, then the
 * statistics, the backups (with restore) and the schedule.
 */

import { useCallback, useState } from "react";

import { useBackupSession } from "../../../lib/BackupApiProvider";

import styles from "./admin.module.css";
import { BackupList } from "./BackupList";
import { BackupSchedule } from "./BackupSchedule";
import { BackupStats } from "./BackupStats";
import { SectionBoundary } from "./SectionBoundary";
import { SignIn } from "./SignIn";
import { Loading } from "./ui";

export function BackupRecovery() {
  const { auth, canSignIn, signOut } = useBackupSession();
  // Bumped when a backup ends or the schedule changes, so the statistics are read again.
  const [statsKey, setStatsKey] = useState(0);
  const refreshStats = useCallback(() => setStatsKey((key) => key + 1), []);

  return (
    <div className={styles.scope}>
      <header className={styles.pageHeader}>
        <div>
          <h1 className={styles.pageTitle}>Backup &amp; Recovery</h1>
          <p className={styles.pageLead}>
            Back up the application&apos;s database and files, prove the backups restorable, and restore them safely.
          </p>
        </div>
        {auth.status === "signed-in" && canSignIn ? (
          <div className={styles.account}>
            <span>Signed in as an administrator</span>
            <button type="button" className={styles.buttonSecondary} onClick={signOut}>
              Sign out
            </button>
          </div>
        ) : null}
      </header>

      {auth.status === "checking" ? <Loading>Checking your access…</Loading> : null}
      {auth.status === "signed-out" || auth.status === "forbidden" ? <SignIn /> : null}
      {auth.status === "signed-in" ? (
        <>
          <SectionBoundary name="Statistics">
            <BackupStats refreshKey={statsKey} />
          </SectionBoundary>
          <SectionBoundary name="Backups">
            <BackupList onChange={refreshStats} />
          </SectionBoundary>
          <SectionBoundary name="Schedule">
            <BackupSchedule onChange={refreshStats} />
          </SectionBoundary>
        </>
      ) : null}
    </div>
  );
}
