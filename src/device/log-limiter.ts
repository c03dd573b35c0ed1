/**
 * A bound on how fast a device fills its log. A JS target that fails every
 * request logs one line per request: at thousands of IOs a second that
 * fills /run (tmpfs, memory) within minutes. Lines are let through up to a
 * budget per interval — per kind of line (the text with its numbers taken
 * out, so "tag 5 at 4096" and "tag 6 at 8192" are the same kind) and in
 * all — and the rest are counted and summed up in one line when the
 * interval ends.
 */

/** How many lines get through and how long each line may be. */
export interface LogLimits {
  /** Lines of one kind let through per interval. */
  perKind: number;
  /** Lines of all kinds let through per interval. */
  total: number;
  intervalMs: number;
  /** Longer lines are cut to this many characters. */
  maxLineChars: number;
}

/** A device's default: 10 lines of a kind, 50 in all, per 10 s; lines up to 2000 characters. */
export const DEFAULT_LOG_LIMITS: LogLimits = { perKind: 10, total: 50, intervalMs: 10_000, maxLineChars: 2000 };

interface Suppressed {
  count: number;
  /** The first line left out, as an example of the kind. */
  example: string;
}

/** The kind of a line: its text with every run of digits replaced, so requests that differ only by numbers match. */
function kindOf(line: string): string {
  return line.replace(/\d+/g, '#');
}

/** Counts lines per interval and says which to write. Not thread-safe: one per event loop. */
export class LogLimiter {
  private windowStart: number | undefined;
  private written = 0;
  private readonly perKind = new Map<string, number>();
  private readonly suppressed = new Map<string, Suppressed>();

  constructor(
    private readonly limits: LogLimits = DEFAULT_LOG_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * The lines to write for `line`: the summaries of an interval that has
   * ended, then `line` itself (cut to length) unless its budget is spent.
   */
  admit(line: string): string[] {
    const out = this.windowEnded() ? this.flush() : [];
    this.windowStart ??= this.now();
    const kind = kindOf(line);
    const seen = this.perKind.get(kind) ?? 0;
    if (seen >= this.limits.perKind || this.written >= this.limits.total) {
      const s = this.suppressed.get(kind);
      if (s) s.count++;
      else this.suppressed.set(kind, { count: 1, example: this.cut(line) });
      return out;
    }
    this.perKind.set(kind, seen + 1);
    this.written++;
    out.push(this.cut(line));
    return out;
  }

  /** When the current interval ends (ms, on the limiter's clock), if lines were left out in it. */
  get suppressedUntil(): number | undefined {
    return this.suppressed.size > 0 && this.windowStart !== undefined
      ? this.windowStart + this.limits.intervalMs
      : undefined;
  }

  /**
   * Ends the interval: one line per kind of line left out in it (how many,
   * and the first of them), and a fresh budget.
   */
  flush(): string[] {
    const seconds = this.windowStart === undefined ? 0 : Math.max(0, (this.now() - this.windowStart) / 1000);
    const out = [...this.suppressed.values()].map(
      (s) =>
        `suppressed ${s.count} similar message${s.count === 1 ? '' : 's'} in ${seconds.toFixed(1)} s, the first: ${s.example}`,
    );
    this.windowStart = undefined;
    this.written = 0;
    this.perKind.clear();
    this.suppressed.clear();
    return out;
  }

  private windowEnded(): boolean {
    return this.windowStart !== undefined && this.now() >= this.windowStart + this.limits.intervalMs;
  }

  private cut(line: string): string {
    if (line.length <= this.limits.maxLineChars) return line;
    return `${line.slice(0, this.limits.maxLineChars)}… (${line.length - this.limits.maxLineChars} more characters)`;
  }
}
