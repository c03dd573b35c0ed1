/**
 * The manifest's JSON Schema (schema/ublk-device.v1.schema.json, the single
 * source of truth for its fields), compiled once with ajv, and the
 * TypeScript types that mirror it (a unit test keeps the two in step).
 */
import Ajv, { ValidateFunction } from 'ajv';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const SCHEMA_PATH = path.resolve(__dirname, '..', '..', '..', 'schema', 'ublk-device.v1.schema.json');

export type RecoveryMode = 'reissue' | 'fail-inflight' | 'fail-io' | 'none';

export type ManifestTarget =
  | { type: 'null' }
  | { type: 'memory' }
  | { type: 'loop'; file: string; create?: boolean; directIo?: 'auto' | boolean }
  | { type: 'js'; module: string; options?: Record<string, unknown> };

/** spec of a UblkDevice manifest. */
export interface ManifestSpec {
  id?: number;
  target: ManifestTarget;
  size?: number | string;
  queues?: number;
  depth?: number;
  maxIoSize?: number | string;
  logicalBlockSize?: 512 | 1024 | 2048 | 4096;
  readOnly?: boolean;
  recovery?: RecoveryMode;
}

/** One manifest document. */
export interface UblkDeviceManifest {
  apiVersion: 'ublk-ts/v1';
  kind: 'UblkDevice';
  metadata: { name: string };
  spec: ManifestSpec;
}

/** The parsed schema document. */
export const schemaDocument: Record<string, any> = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8'));

let compiled: ValidateFunction | undefined;

/** The compiled validator; applies the schema's defaults to what it validates. */
export function manifestValidator(): ValidateFunction {
  if (!compiled) {
    const ajv = new Ajv({ allErrors: true, useDefaults: true, discriminator: true, strict: false, verbose: true });
    ajv.addKeyword({ keyword: 'x-expected', schemaType: 'string' });
    compiled = ajv.compile(schemaDocument);
  }
  return compiled;
}
