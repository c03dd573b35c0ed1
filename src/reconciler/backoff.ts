/**
 * Retry timing for devices that keep failing, in one object the watcher
 * owns (a one-shot pass gets a fresh one): consecutive failures per
 * manifest name and when the last one happened. The planner reads it to
 * turn a due action into a `wait` that carries its due time.
 */

/** A server that lived less than this was not a success: its restart counts towards backoff. */
export const STABLE_MS = 3_000;

/** Retry delays: `baseMs` doubling per consecutive failure, capped at `maxMs`. */
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

/** 1 s doubling to 60 s, as the README documents. */
export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 1000, maxMs: 60_000 };

/** A name's failure history. */
export interface FailureHistory {
  failures: number;
  /** When the last failure happened (ms since the epoch, from the pass's clock). */
  at: number;
}

/** Retry delay after `failures` consecutive failures. */
export function backoffMs(failures: number, policy: BackoffPolicy = DEFAULT_BACKOFF): number {
  return failures <= 0 ? 0 : Math.min(policy.maxMs, policy.baseMs * 2 ** (failures - 1));
}

/** Consecutive failures by manifest name. */
export class Backoff {
  private readonly history = new Map<string, FailureHistory>();

  constructor(readonly policy: BackoffPolicy = DEFAULT_BACKOFF) {}

  /** One more consecutive failure of `name` at `now`. */
  failed(name: string, now: number): void {
    this.history.set(name, { failures: (this.history.get(name)?.failures ?? 0) + 1, at: now });
  }

  /** `name` has worked: the next failure starts from the base delay again. */
  succeeded(name: string): void {
    this.history.delete(name);
  }

  /** When `name` may be tried again and after how many failures; undefined when it may be tried now. */
  pending(name: string, now: number): { failures: number; dueAt: number } | undefined {
    const h = this.history.get(name);
    if (!h) return undefined;
    const dueAt = h.at + backoffMs(h.failures, this.policy);
    return dueAt > now ? { failures: h.failures, dueAt } : undefined;
  }

  /** The failure count of `name` (0 when it has none). */
  failures(name: string): number {
    return this.history.get(name)?.failures ?? 0;
  }
}
