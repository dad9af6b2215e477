"use client";

/**
 * A modal dialog: role "dialog", named by its title, focus moved into it and kept there, Escape to
 * close, and focus handed back to what opened it. Hand-made rather than <dialog>.showModal() because
 * jsdom (the component tests) does not implement the latter, and the behaviour must be tested.
 */

import { useEffect, useId, useRef, type ReactNode } from "react";

import styles from "./admin.module.css";

export interface DialogProps {
  title: string;
  /** Closes the dialog (Escape, the backdrop, a Cancel button); omit while it must stay open. */
  onClose?: () => void;
  children: ReactNode;
  /** An element to focus first; otherwise the first field or button. */
  initialFocusRef?: React.RefObject<HTMLElement | null>;
  /** Wider dialogs hold forms with several columns. */
  size?: "small" | "large";
  /** A sentence under the title, read out with it. */
  description?: ReactNode;
}

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function Dialog({ title, onClose, children, initialFocusRef, size = "small", description }: DialogProps) {
  const panelRef = useRef<HTMLDivElement>(null);
  const titleId = useId();
  const descriptionId = useId();
  const onCloseRef = useRef(onClose);
  onCloseRef.current = onClose;

  useEffect(() => {
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    const panel = panelRef.current;
    const first = initialFocusRef?.current ?? panel?.querySelector<HTMLElement>(FOCUSABLE) ?? panel;
    first?.focus();
    // The page behind must not scroll under a modal dialog.
    const overflow = document.body.style.overflow;
    document.body.style.overflow = "hidden";
    // On the document, not the panel: Escape still closes when focus was lost (a button that went
    // disabled under it, a click on the text).
    const onEscape = (event: KeyboardEvent) => {
      if (event.key === "Escape" && onCloseRef.current) {
        event.preventDefault();
        onCloseRef.current();
      }
    };
    document.addEventListener("keydown", onEscape);
    return () => {
      document.removeEventListener("keydown", onEscape);
      document.body.style.overflow = overflow;
      if (opener?.isConnected) opener.focus();
    };
    // Focus moves once, when the dialog opens, whatever its props become later.
  }, []); // eslint-disable-line react-hooks/exhaustive-deps

  function onKeyDown(event: React.KeyboardEvent<HTMLDivElement>) {
    if (event.key !== "Tab" || !panelRef.current) return;
    // Keep Tab and Shift+Tab inside the dialog, as aria-modal promises.
    const focusable = [...panelRef.current.querySelectorAll<HTMLElement>(FOCUSABLE)];
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (!first || !last) return;
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  }

  return (
    <div
      className={styles.backdrop}
      onMouseDown={(event) => {
        // A click on the backdrop itself (not a drag that ends there) closes, as Escape does.
        if (event.target === event.currentTarget) onCloseRef.current?.();
      }}
    >
      <div
        ref={panelRef}
        role="dialog"
        aria-modal="true"
        aria-labelledby={titleId}
        aria-describedby={description ? descriptionId : undefined}
        className={`${styles.dialog} ${size === "large" ? styles.dialogLarge : ""}`}
        tabIndex={-1}
        onKeyDown={onKeyDown}
      >
        <h2 id={titleId} className={styles.dialogTitle}>
          {title}
        </h2>
        {description ? (
          <div id={descriptionId} className={styles.dialogDescription}>
            {description}
          </div>
        ) : null}
        {children}
      </div>
    </div>
  );
}
