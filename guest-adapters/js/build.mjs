// Builds a JavaScript guest: bundles ENTRY with its npm imports (esbuild; the
// `kmsgw:` and `wasi:` imports stay imports), then makes the component with
// componentize-js against the WIT package in WIT (default: this repository's).
//
//   node build.mjs ENTRY OUT.wasm [WIT]

import { componentize } from '@bytecodealliance/componentize-js';
import { build } from 'esbuild';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const [entry, out, wit = new URL('../../wit', import.meta.url).pathname] = process.argv.slice(2);
if (!entry || !out) {
  console.error('usage: node build.mjs ENTRY OUT.wasm [WIT]');
  process.exit(2);
}
const bundle = join(await mkdtemp(join(tmpdir(), 'kmsgw-js-')), 'bundle.js');
await build({
  entryPoints: [entry], bundle: true, format: 'esm', platform: 'neutral',
  external: ['kmsgw:*', 'wasi:*'], outfile: bundle, logLevel: 'warning',
});
const { component } = await componentize({
  sourcePath: bundle, witPath: resolve(wit), worldName: 'provider',
});
await writeFile(out, component);
console.log(out);
