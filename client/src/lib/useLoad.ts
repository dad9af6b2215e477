"use client";

import { useCallback, useEffect, useRef, useState } from "react";

import { isAbort } from "./backupApi";

export interface Loaded<T> {
  data: T | null;
  error: unknown;
  /** True while the first load, or a reload asked for with `reload()`, is under way. */
  loading: boolean;
  /** Loads again; `quietly` keeps the current data on screen without a loading state (a poll). */
  reload: (quietly?: boolean) => void;
  /** Replaces the data at once (an optimistic change), until the next load. */
  setData: React.Dispatch<React.SetStateAction<T | null>>;
}

/**
 * The result of `load`, loaded when the component mounts and whenever `key` changes; a load still
 * under way when a newer one starts (or the component goes) is aborted, so an old answer never
 * overwrites a newer one.
 */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, key: string): Loaded<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [generation, setGeneration] = useState(0);
  const quietRef = useRef(false);
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    const controller = new AbortController();
    if (!quietRef.current) setLoading(true);
    quietRef.current = false;
    loadRef
      .current(controller.signal)
      .then((value) => {
        if (controller.signal.aborted) return;
        setData(value);
        setError(null);
        setLoading(false);
      })
      .catch((reason: unknown) => {
        if (controller.signal.aborted || isAbort(reason)) return;
        setError(reason);
        setLoading(false);
      });
    return () => controller.abort();
  }, [key, generation]);

  const reload = useCallback((quietly = false) => {
    quietRef.current = quietly;
    setGeneration((g) => g + 1);
  }, []);

  return { data, error, loading, reload, setData };
}
