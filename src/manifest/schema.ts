/**
 * The manifest's JSON Schema (schema/ublk-device.v1.schema.json, the single
 * source of truth for its fields), compiled once with ajv, and the
 * TypeScript types of a manifest document. Its `spec` is the device
 * request type every entry point shares (`DeviceSpecInput`); a unit test
 * keeps the types and the schema in step.
 */
import Ajv, { ValidateFunction } from 'ajv';
import type { DeviceSpecInput, TargetInput } from '../spec/device-spec';
import { schemaDocument } from '../spec/schema-document';

export { SCHEMA_PATH, schemaDocument } from '../spec/schema-document';
export type {
  DirectIoMode,
  JsTarget,
  LogicalBlockSize,
  LoopTarget,
  MemoryTarget,
  NullTarget,
  RecoveryMode,
  TargetInput as ManifestTarget,
} from '../spec/device-spec';

/** The only manifest version this loader reads; a v2 gets its own schema file. */
export const API_VERSION = 'ublk-ts/v1';

/**
 * `spec` of a UblkDevice manifest: the device the host should have. The
 * device request type itself, with the target always written out (the
 * schema requires a mapping there).
 */
export interface ManifestSpec extends DeviceSpecInput {
  target: TargetInput;
  /**
   * Consent to re-create a device whose data lives only in it (memory, js
   * targets) when its spec changes; without it the change is drift.
   */
  allowDataLoss?: boolean;
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

let compiled: ValidateFunction<UblkDeviceManifest> | undefined;

/**
 * The compiled validator. It fills in the schema's defaults in place, so a
 * validated document carries every default. `verbose` keeps the offending
 * value and schema on each error, which the loader needs to say what was
 * expected and what was given.
 */
export function manifestValidator(): ValidateFunction<UblkDeviceManifest> {
  if (!compiled) {
    const ajv = new Ajv({
      allErrors: true,
      useDefaults: true,
      discriminator: true,
      verbose: true,
      strict: true,
      strictRequired: false,
      allowUnionTypes: true,
    });
    // Annotations for people and for limits.ts; they validate nothing themselves.
    ajv.addKeyword({ keyword: 'x-expected', schemaType: 'string' });
    ajv.addKeyword({ keyword: 'x-bytes', schemaType: 'object' });
    compiled = ajv.compile<UblkDeviceManifest>(schemaDocument);
  }
  return compiled;
}
