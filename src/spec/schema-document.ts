/**
 * The manifest's JSON Schema document (schema/ublk-device.v1.schema.json),
 * read once. It is the single source of truth for the device spec's
 * fields, enums, defaults and limits: the manifest validator compiles it,
 * `limits.ts` derives the values every other layer uses from it, and the
 * README's manifest reference is generated from its descriptions.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Where the schema lives in the package (this file is dist/src/spec/schema-document.js): shipped so editors and CI can use it too. */
export const SCHEMA_PATH = path.resolve(__dirname, '..', '..', '..', 'schema', 'ublk-device.v1.schema.json');

/** The parsed schema document. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const schemaDocument: Record<string, any> = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8'));
