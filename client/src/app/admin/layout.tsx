import type { ReactNode } from "react";

import { AdminSidebar } from "../_components/layout/AdminSidebar";

import styles from "./layout.module.css";

/** The standalone admin shell: the sidebar and the page. A host dashboard keeps its own layout. */
export default function AdminLayout({ children }: { children: ReactNode }) {
  return (
    <div className={styles.shell}>
      <a href="#main" className={styles.skipLink}>
        Skip to content
      </a>
      <AdminSidebar />
      <main id="main" className={styles.main} tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}
