/**
 * What one manifest file may cost the reconciler. A manifest is a few
 * hundred bytes; these bounds are far above any real one and far below
 * what could stall a pass (a 64 KiB YAML file parses in well under a
 * second even on a loaded machine), so a hostile or runaway file costs one
 * located error, never the other devices.
 */

/** Largest manifest file read; a larger one is reported, not parsed. */
export const MAX_FILE_BYTES = 64 * 1024;
/** Most YAML documents (`---`) in one file. */
export const MAX_DOCUMENTS = 100;
/** Deepest nesting of mappings and lists in one document (a manifest needs 4, js options a few more). */
export const MAX_DEPTH = 32;
/** Most YAML aliases (`*name`) in one document. */
export const MAX_ALIASES = 32;
/** Most nodes YAML aliases may expand to, as the yaml library counts them (its own default). */
export const MAX_ALIAS_EXPANSION = 100;
/** Largest document once aliases are expanded, in characters of JSON. */
export const MAX_EXPANDED_CHARS = 256 * 1024;
