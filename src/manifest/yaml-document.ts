/**
 * One YAML document of a manifest file, with what is needed to point an
 * error at the node it is about (line and column of a field, or of its key).
 */
import { Document, isMap, isPair, isScalar, LineCounter, Node as YamlNode } from 'yaml';
import { clip, shown } from '../spec/show-value';
import { ManifestError } from './manifest-error';

export interface Position {
  line: number;
  column: number;
}

/** One YAML document of a file, with what is needed to point errors at its nodes. */
export class DocumentContext {
  readonly name: string | undefined;

  constructor(
    readonly file: string,
    readonly doc: Document,
    private readonly lines: LineCounter,
  ) {
    const name = doc.getIn(['metadata', 'name']);
    this.name = typeof name === 'string' ? name : undefined;
  }

  position(offset: number): Position {
    const { line, col } = this.lines.linePos(offset);
    return { line, column: col };
  }

  /** Where the document's content starts. */
  start(): Position {
    return this.position(this.doc.contents?.range?.[0] ?? 0);
  }

  /** The node at `segments`, or its nearest ancestor that exists in the YAML. */
  nodeAt(segments: readonly string[]): YamlNode | undefined {
    for (let n = segments.length; n > 0; n--) {
      const node = this.doc.getIn(segments.slice(0, n), true);
      if (isNode(node)) return node;
    }
    return this.doc.contents ?? undefined;
  }

  /** The key node of `key` in the mapping at `segments`: unknown fields are reported at their key. */
  keyAt(segments: readonly string[], key: string): YamlNode | undefined {
    const map = segments.length > 0 ? this.doc.getIn(segments, true) : this.doc.contents;
    if (!isMap(map)) return undefined;
    const pair = map.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === key);
    return pair && isScalar(pair.key) ? pair.key : undefined;
  }

  error(segments: readonly string[], message: string, node = this.nodeAt(segments)): ManifestError {
    const at = node?.range ? this.position(node.range[0]) : this.start();
    return { file: this.file, ...at, path: clip(segments.join('.')), message, manifestName: this.name };
  }
}

function isNode(value: unknown): value is YamlNode {
  return typeof value === 'object' && value !== null && 'range' in value && Array.isArray((value as YamlNode).range);
}

/** How a given value reads in a message: strings quoted, structures named, never more than a line of it. */
export function describeValue(v: unknown): string {
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype) {
    return clip(String(v));
  }
  return shown(v);
}
