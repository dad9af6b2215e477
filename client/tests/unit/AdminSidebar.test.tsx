import { render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { AdminSidebar, BACKUP_RECOVERY_NAV_ITEM } from "../../src/app/_components/layout/AdminSidebar";

const pathname = vi.hoisted(() => ({ current: "/admin/backup-recovery" }));
vi.mock("next/navigation", () => ({ usePathname: () => pathname.current }));

describe("AdminSidebar", () => {
  it("has a Backup & Recovery item marked as the current page, with its sections under it", () => {
    render(<AdminSidebar />);
    const nav = screen.getByRole("navigation", { name: "Admin" });
    const item = within(nav).getByRole("link", { name: "Backup & Recovery" });
    expect(item).toHaveAttribute("href", "/admin/backup-recovery");
    expect(item).toHaveAttribute("aria-current", "page");
    expect(within(nav).getByRole("link", { name: "Schedule" })).toHaveAttribute("href", "#schedule");
  });

  it("marks the page the same with a trailing slash, and no other item", () => {
    pathname.current = "/admin/backup-recovery/";
    render(<AdminSidebar items={[{ href: "/admin/users", label: "Users" }, BACKUP_RECOVERY_NAV_ITEM]} />);
    expect(screen.getByRole("link", { name: "Backup & Recovery" })).toHaveAttribute("aria-current", "page");
    expect(screen.getByRole("link", { name: "Users" })).not.toHaveAttribute("aria-current");
  });

  it("folds its items behind a Menu button on a phone", async () => {
    render(<AdminSidebar />);
    const menu = screen.getByRole("button", { name: "Menu" });
    expect(menu).toHaveAttribute("aria-expanded", "false");
    await userEvent.click(menu);
    expect(menu).toHaveAttribute("aria-expanded", "true");
  });
});
