import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** One apt repository entry as the machine's apt sources declare it. */
export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  /** Keyring path or inline key, verbatim (deb822 continuation lines included). */
  signedBy?: string;
}

/**
 * Parses deb822 `.sources` text. Disabled paragraphs are dropped; Signed-By keeps its
 * continuation lines so an inline key can be written back unchanged.
 */
export function parseDeb822Sources(text: string): AptSource[] {
  return splitParagraphs(text)
    .map(parseParagraph)
    .filter((fields) => (fields.get('enabled') ?? 'yes').trim().toLowerCase() !== 'no')
    .map((fields) => ({
      types: words(fields.get('types')),
      uris: words(fields.get('uris')),
      suites: words(fields.get('suites')),
      components: words(fields.get('components')),
      signedBy: fields.get('signed-by'),
    }));
}

/** Parses one-line `sources.list` text (`deb [signed-by=...] URI SUITE COMPONENT...`). */
export function parseOneLineSources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const match = /^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (match === null) continue;
    const [, type, options = '', uri, suite, components] = match;
    const signedBy = /(?:^|\s)signed-by=(\S+)/.exec(options)?.[1];
    sources.push({ types: [type], uris: [uri], suites: [suite], components: words(components), signedBy });
  }
  return sources;
}

/** Reads every source apt itself would read: sources.list plus sources.list.d/*.list and *.sources. */
export function readMachineSources(aptEtc = '/etc/apt'): AptSource[] {
  const sources = parseOneLineSources(readIfExists(join(aptEtc, 'sources.list')));
  const partsDir = join(aptEtc, 'sources.list.d');
  for (const name of listIfExists(partsDir).sort()) {
    const text = readIfExists(join(partsDir, name));
    if (name.endsWith('.list')) sources.push(...parseOneLineSources(text));
    else if (name.endsWith('.sources')) sources.push(...parseDeb822Sources(text));
  }
  return sources;
}

/**
 * Writes a deb822 sources file that points the mirrors this machine uses for `baseSuite`
 * at `suite` instead, keeping each mirror's Signed-By. Returns undefined when the machine
 * has no binary source for `baseSuite`, so no mirror host is ever guessed.
 */
export function derivedSourcesFile(
  sources: AptSource[],
  baseSuite: string,
  suite: string,
  components: string[],
  architecture: string,
): string | undefined {
  const seen = new Set<string>();
  const paragraphs: string[] = [];
  for (const source of sources) {
    if (!source.types.includes('deb') || !source.suites.includes(baseSuite)) continue;
    const uris = source.uris.filter((uri) => !uri.startsWith('cdrom:'));
    const key = `${uris.join(' ')}\n${source.signedBy ?? ''}`;
    if (uris.length === 0 || seen.has(key)) continue;
    seen.add(key);
    const lines = [
      'Types: deb',
      `URIs: ${uris.join(' ')}`,
      `Suites: ${suite}`,
      `Components: ${components.join(' ')}`,
      `Architectures: ${architecture}`,
    ];
    if (source.signedBy !== undefined)
      lines.push(`Signed-By:${source.signedBy.startsWith('\n') ? '' : ' '}${source.signedBy}`);
    paragraphs.push(lines.join('\n'));
  }
  return paragraphs.length === 0 ? undefined : `${paragraphs.join('\n\n')}\n`;
}

function splitParagraphs(text: string): string[][] {
  const paragraphs: string[][] = [[]];
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (line.trim() === '') {
      if (paragraphs[paragraphs.length - 1].length > 0) paragraphs.push([]);
      continue;
    }
    paragraphs[paragraphs.length - 1].push(line);
  }
  return paragraphs.filter((p) => p.length > 0);
}

function parseParagraph(lines: string[]): Map<string, string> {
  const fields = new Map<string, string>();
  let current: string | undefined;
  for (const line of lines) {
    if (/^\s/.test(line) && current !== undefined) {
      fields.set(current, `${fields.get(current)}\n${line}`);
      continue;
    }
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    current = line.slice(0, colon).trim().toLowerCase();
    fields.set(current, line.slice(colon + 1).trim());
  }
  return fields;
}

function words(value: string | undefined): string[] {
  return (value ?? '').split(/\s+/).filter(Boolean);
}

function readIfExists(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function listIfExists(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
