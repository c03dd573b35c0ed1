/** A manifest problem, located in its file, and how it is printed. */

/**
 * A problem with a manifest, located in its file. `line` and `column` are
 * 1-based; 0 means the whole file (or the directory, for permissions).
 */
export interface ManifestError {
  /** File name relative to the manifest directory; the directory itself for directory-wide problems. */
  file: string;
  line: number;
  column: number;
  /** Field path, e.g. 'spec.queues'; '' for the file or document as a whole. */
  path: string;
  message: string;
  /** metadata.name of the document, when it could be read: the reconciler then leaves that device alone. */
  manifestName?: string;
}

/** One line per error, the way compilers print them: `data.yaml:7:12: spec.queues: must be between 1 and 32, got 64`. */
export function formatManifestError(e: ManifestError): string {
  const where = e.line > 0 ? `${e.file}:${e.line}:${e.column}` : e.file;
  return `${where}: ${e.path ? `${e.path}: ` : ''}${e.message}`;
}

/** An error about a whole file (or the directory): no position. */
export function fileError(file: string, message: string): ManifestError {
  return { file, line: 0, column: 0, path: '', message };
}
