/**
 * How a user's value is repeated in an error message: quoted, and never
 * more than about 80 characters of it, so a hostile or mistaken value of
 * megabytes costs one short line, not a flooded log.
 */

/** Most characters of a given value an error message repeats. */
export const MAX_SHOWN_CHARS = 80;

/** `text`, cut to about MAX_SHOWN_CHARS characters with an ellipsis and its full length when longer. */
export function clip(text: string): string {
  if (text.length <= MAX_SHOWN_CHARS) return text;
  return `${text.slice(0, MAX_SHOWN_CHARS - 20)}… (${text.length} characters)`;
}

/** A string as JSON (quoted, escaped), cut like `clip` when long. */
export function quote(text: string): string {
  if (text.length <= MAX_SHOWN_CHARS) return JSON.stringify(text);
  return `${JSON.stringify(text.slice(0, MAX_SHOWN_CHARS - 20))}… (${text.length} characters)`;
}

/** Any value for a message: strings quoted, the rest as text, both cut to a line. */
export function shown(value: unknown): string {
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'object' && value !== null) return Array.isArray(value) ? 'a list' : 'a mapping';
  return clip(String(value));
}
