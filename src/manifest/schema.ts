/**
 * The manifest's JSON Schema (schema/ublk-device.v1.schema.json, the single
 * source of truth for its fields), compiled once with ajv, and the
 * TypeScript types that mirror it (a unit test keeps the two in step).
 */
import Ajv, { ValidateFunction } from 'ajv';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Where the schema lives in the package: shipped as a file so other tools (editors, CI) can use it too. */
export const SCHEMA_PATH = path.resolve(__dirname, '..', '..', '..', 'schema', 'ublk-device.v1.schema.json');

/** The only manifest version this loader reads; a v2 gets its own schema file. */
export const API_VERSION = 'ublk-ts/v1';

/** What the kernel does with IO when the device's server dies (UBLK_F_USER_RECOVERY and its variants). */
export type RecoveryMode = 'reissue' | 'fail-inflight' | 'fail-io' | 'none';

/** Logical block sizes the kernel accepts for a ublk device (2^9..2^12). */
export type LogicalBlockSize = 512 | 1024 | 2048 | 4096;

/** O_DIRECT on a loop target's backing file: auto uses it where the file system allows. */
export type DirectIoMode = 'auto' | boolean;

/** A target that completes every request at once and stores nothing. */
export interface NullTarget {
  type: 'null';
}

/** A RAM-backed target. */
export interface MemoryTarget {
  type: 'memory';
}

/** A target backed by a file or block device. */
export interface LoopTarget {
  type: 'loop';
  file: string;
  create?: boolean;
  directIo?: DirectIoMode;
}

/** A target implemented by a JavaScript module. */
export interface JsTarget {
  type: 'js';
  module: string;
  options?: Record<string, unknown>;
}

/** What serves a device's IO, discriminated by `type`. */
export type ManifestTarget = NullTarget | MemoryTarget | LoopTarget | JsTarget;

/** `spec` of a UblkDevice manifest: the device the host should have. */
export interface ManifestSpec {
  id?: number;
  target: ManifestTarget;
  size?: number | string;
  queues?: number;
  depth?: number;
  maxIoSize?: number | string;
  logicalBlockSize?: LogicalBlockSize;
  readOnly?: boolean;
  recovery?: RecoveryMode;
}

/** `metadata` of a UblkDevice manifest: the name keys the device's state record. */
export interface ManifestMetadata {
  name: string;
}

/** One manifest document, as validated by the schema. */
export interface UblkDeviceManifest {
  apiVersion: typeof API_VERSION;
  kind: 'UblkDevice';
  metadata: ManifestMetadata;
  spec: ManifestSpec;
}

/** The parsed schema document: the README reference and the tests read its descriptions and enums. */
export const schemaDocument: Record<string, any> = JSON.parse(fs.readFileSync(SCHEMA_PATH, 'utf8'));

let compiled: ValidateFunction<UblkDeviceManifest> | undefined;

/**
 * The compiled validator. It fills in the schema's defaults in place, so a
 * validated document carries every default. `verbose` keeps the offending
 * value and schema on each error, which the loader needs to say what was
 * expected and what was given.
 */
export function manifestValidator(): ValidateFunction<UblkDeviceManifest> {
  if (!compiled) {
    const ajv = new Ajv({ allErrors: true, useDefaults: true, discriminator: true, verbose: true, strict: true, strictRequired: false, allowUnionTypes: true });
    ajv.addKeyword({ keyword: 'x-expected', schemaType: 'string' });
    compiled = ajv.compile<UblkDeviceManifest>(schemaDocument);
  }
  return compiled;
}
