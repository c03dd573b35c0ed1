/** Byte sizes as users write them: integers, or strings like '512KiB', '10GiB'. */
import { quote, shown } from './show-value';

const units: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KiB: 1024,
  M: 1024 ** 2,
  MiB: 1024 ** 2,
  G: 1024 ** 3,
  GiB: 1024 ** 3,
  T: 1024 ** 4,
  TiB: 1024 ** 4,
};

/** The largest size a number can hold exactly (2^53 - 1 bytes, 8 PiB less a byte). */
export const MAX_SIZE_BYTES = Number.MAX_SAFE_INTEGER;

function tooLarge(given: string): string {
  return `is too large: at most ${MAX_SIZE_BYTES} bytes (8 PiB), got ${given}`;
}

/** Accepted unit suffixes, for error messages. */
export const SIZE_UNITS = 'bytes, or a number with KiB, MiB, GiB or TiB';

/**
 * Parses a size into bytes. Returns an error string instead of throwing so
 * callers can attach the field name and source location.
 */
export function parseSize(value: unknown): { bytes: number } | { error: string } {
  if (typeof value === 'number') {
    if (value > MAX_SIZE_BYTES) return { error: tooLarge(shown(value)) };
    if (!Number.isSafeInteger(value) || value < 0) return { error: `expected a whole number of bytes, got ${value}` };
    return { bytes: value };
  }
  if (typeof value !== 'string') return { error: `expected ${SIZE_UNITS}, got ${typeof value}` };
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(value);
  if (!match) return { error: `expected ${SIZE_UNITS}, got ${quote(value)}` };
  const unit = match[2] ?? '';
  const factor = units[unit];
  if (factor === undefined)
    return { error: `unknown size unit ${quote(unit)} in ${quote(value)}: expected ${SIZE_UNITS}` };
  const bytes = Number(match[1]) * factor;
  if (bytes > MAX_SIZE_BYTES) return { error: tooLarge(quote(value)) };
  if (!Number.isSafeInteger(bytes)) return { error: `must be a whole number of bytes, got ${quote(value)}` };
  return { bytes };
}

/** Formats bytes with the largest binary unit that divides them exactly. */
export function formatSize(bytes: number): string {
  for (const unit of ['TiB', 'GiB', 'MiB', 'KiB']) {
    const factor = units[unit]!;
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${unit}`;
  }
  return `${bytes}B`;
}
