// Builds the client: dist/index.js (ESM, minified, for browsers, Node ≥ 20, Workers, Deno, Bun)
// and dist/index.d.ts (its types), then prints its size and fails over the budget: 6 KB
// minified and gzipped.
// Run: `node clients/js/build.mjs` (`make test` runs it).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.join(HERE, '../../node_modules/.bin');
const OUT = path.join(HERE, 'dist/index.js');
const BUDGET = 6 * 1024;

await build({
  entryPoints: [path.join(HERE, 'src/index.ts')],
  outfile: OUT,
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  logLevel: 'warning',
});
execFileSync(path.join(BIN, 'tsc'), ['-p', HERE], { stdio: 'inherit' });

const code = fs.readFileSync(OUT);
const gz = gzipSync(code, { level: 9 }).length;
console.log(`@edgehub/client: dist/index.js ${code.length} bytes minified, ${gz} bytes gzipped (budget ${BUDGET})`);
if (gz > BUDGET) {
  console.error(`@edgehub/client: over the size budget by ${gz - BUDGET} bytes`);
  process.exit(1);
}
