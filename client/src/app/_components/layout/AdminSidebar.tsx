"use client";

/**
 * The admin dashboard's navigation, with the "Backup & Recovery" item. The current page is marked
 * with aria-current="page"; under it, links to the page's sections. On a phone the list folds away
 * behind a "Menu" button.
 */

import Link from "next/link";
import { usePathname } from "next/navigation";
import { useId, useState } from "react";

import styles from "./AdminSidebar.module.css";

export interface AdminNavItem {
  href: string;
  label: string;
  /** In-page links shown under the item while it is the current page. */
  sections?: ReadonlyArray<{ href: string; label: string }>;
}

export const BACKUP_RECOVERY_NAV_ITEM: AdminNavItem = {
  href: "/admin/backup-recovery",
  label: "Backup & Recovery",
  sections: [
    { href: "#statistics", label: "Statistics" },
    { href: "#backups", label: "Backups" },
    { href: "#schedule", label: "Schedule" },
  ],
};

export interface AdminSidebarProps {
  /** The dashboard's items; a host adds BACKUP_RECOVERY_NAV_ITEM to its own. */
  items?: readonly AdminNavItem[];
  title?: string;
}

/** "/admin/backup-recovery/" and "/admin/backup-recovery.html" are the same page as "/admin/backup-recovery". */
function samePage(pathname: string, href: string): boolean {
  const normal = (path: string) => path.replace(/\.html$/, "").replace(/\/+$/, "") || "/";
  return normal(pathname) === normal(href);
}

export function AdminSidebar({ items = [BACKUP_RECOVERY_NAV_ITEM], title = "Administration" }: AdminSidebarProps) {
  const pathname = usePathname() ?? "";
  const [open, setOpen] = useState(false);
  const listId = useId();
  return (
    <nav className={styles.sidebar} aria-label="Admin">
      <div className={styles.brand}>
        <span className={styles.title}>{title}</span>
        <button
          type="button"
          className={styles.menuButton}
          aria-expanded={open}
          aria-controls={listId}
          onClick={() => setOpen((value) => !value)}
        >
          Menu
        </button>
      </div>
      <ul id={listId} className={`${styles.items} ${open ? styles.itemsOpen : ""}`}>
        {items.map((item) => {
          const current = samePage(pathname, item.href);
          return (
            <li key={item.href}>
              <Link
                href={item.href}
                // A static export has no server to answer prefetches ahead of a click.
                prefetch={false}
                className={styles.item}
                aria-current={current ? "page" : undefined}
                onClick={() => setOpen(false)}
              >
                {item.label}
              </Link>
              {current && item.sections ? (
                <ul className={styles.sections}>
                  {item.sections.map((section) => (
                    <li key={section.href}>
                      <a href={section.href} className={styles.section} onClick={() => setOpen(false)}>
                        {section.label}
                      </a>
                    </li>
                  ))}
                </ul>
              ) : null}
            </li>
          );
        })}
      </ul>
    </nav>
  );
}
