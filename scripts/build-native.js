#!/usr/bin/env node
// Builds the native addon with node-gyp after checking for liburing, so a
// missing system package fails with one line that says what to install.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const probe = spawnSync('pkg-config', ['--exists', 'liburing'], { stdio: 'ignore' });
if (probe.error || probe.status !== 0) {
  const why = probe.error ? 'pkg-config is not installed' : 'pkg-config cannot find liburing';
  console.error(
    `ublk-ts: ${why}: install Debian's liburing-dev and pkg-config (apt-get install liburing-dev pkg-config)`,
  );
  process.exit(1);
}

// npm passes the node-gyp it bundles; run by hand, look for npm's copy.
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(
      path.dirname(process.execPath),
      '..',
      'lib',
      'node_modules',
      'npm',
      'node_modules',
      'node-gyp',
      'bin',
      'node-gyp.js',
    ),
  ];
  return candidates.find((p) => p && fs.existsSync(p));
}

const nodeGyp = findNodeGyp();
if (!nodeGyp) {
  console.error('ublk-ts: cannot find node-gyp: run the build through npm (npm run build:native)');
  process.exit(1);
}
// Node's own headers, where this Node ships them, so a build needs no download (CI has no network).
const env = { ...process.env };
const nodeDir = path.join(path.dirname(process.execPath), '..');
if (!env.npm_config_nodedir && fs.existsSync(path.join(nodeDir, 'include', 'node', 'node_api.h')))
  env.npm_config_nodedir = nodeDir;
const build = spawnSync(process.execPath, [nodeGyp, 'rebuild'], {
  stdio: 'inherit',
  cwd: path.join(__dirname, '..'),
  env,
});
if (build.error) {
  console.error(`ublk-ts: cannot run node-gyp: ${build.error.message}`);
  process.exit(1);
}
process.exit(build.status ?? 1);
