export { formatManifestError, isManifestFile, loadManifestDir, closest } from './loader';
export type { LoadedManifest, LoadResult, ManifestError } from './loader';
export { manifestValidator, schemaDocument, SCHEMA_PATH } from './schema';
export type { ManifestSpec, ManifestTarget, RecoveryMode, UblkDeviceManifest } from './schema';
export { manifestReference } from './reference';
