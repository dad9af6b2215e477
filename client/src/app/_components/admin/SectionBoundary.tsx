"use client";

/**
 * Keeps a section's unexpected failure (a bug, an answer of a shape nobody foresaw) inside that
 * section, said in words, instead of taking the whole page down to a blank screen.
 */

import { Component, type ErrorInfo, type ReactNode } from "react";

import styles from "./admin.module.css";

interface Props {
  /** The section's name, for the message ("Backups"). */
  name: string;
  children: ReactNode;
}

interface State {
  error: Error | null;
}

export class SectionBoundary extends Component<Props, State> {
  override state: State = { error: null };

  static getDerivedStateFromError(error: unknown): State {
    return { error: error instanceof Error ? error : new Error(String(error)) };
  }

  override componentDidCatch(error: Error, info: ErrorInfo): void {
    // Logged for whoever opens the console; the reader sees the message below.
    console.warn(`The ${this.props.name} section failed:`, error, info.componentStack);
  }

  override render(): ReactNode {
    const { error } = this.state;
    if (!error) return this.props.children;
    return (
      <section className={styles.section} aria-label={this.props.name}>
        <div role="alert" className={styles.error}>
          <strong>The {this.props.name} section could not be shown.</strong> {error.message}{" "}
          <button type="button" className={styles.linkButton} onClick={() => this.setState({ error: null })}>
            Try again
          </button>
        </div>
      </section>
    );
  }
}
