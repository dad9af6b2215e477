import type { Metadata } from "next";

import { BackupRecovery } from "../../_components/admin/BackupRecovery";
import { BackupApiProvider } from "../../../lib/BackupApiProvider";

export const metadata: Metadata = {
  title: "Backup & Recovery",
  description: "Backups, restores, verification and schedules of the application's database and files.",
};

/**
 * /admin/backup-recovery. Everything on it runs in the browser, against the gateway's admin API with
 * the administrator's token: the static export holds no data, so it may be served to anyone.
 */
export default function BackupRecoveryPage() {
  return (
    <BackupApiProvider>
      <BackupRecovery />
    </BackupApiProvider>
  );
}
