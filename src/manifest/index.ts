/**
 * The manifest layer of the declarative device manager: the versioned
 * JSON Schema, its TypeScript mirror, and the directory loader that turns
 * YAML files into valid, defaulted manifests plus located errors.
 */
export {
  closest,
  formatManifestError,
  isManifestFile,
  loadManifestDir,
  loadManifestDirAsync,
  ManifestCache,
} from './loader';
export { permissionProblem } from './permissions';
export type { LoadedManifest, LoadOptions, LoadResult, ManifestError } from './loader';
export { API_VERSION, manifestValidator, SCHEMA_PATH, schemaDocument } from './schema';
export type {
  DirectIoMode,
  JsTarget,
  LogicalBlockSize,
  LoopTarget,
  ManifestMetadata,
  ManifestSpec,
  ManifestTarget,
  MemoryTarget,
  NullTarget,
  RecoveryMode,
  UblkDeviceManifest,
} from './schema';
export { manifestReference } from './reference';
