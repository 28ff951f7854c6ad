// Compiles a solc standard JSON input read from stdin with the solc-js package pinned
// in package.json. Writes {version, output, imports} as JSON to stdout: `output` is the
// compiler's standard JSON output, and `imports` maps each import path the compiler
// requested to the file contents supplied for it.
// Imports resolve only under node_modules/@openzeppelin/, so a build never reads files
// outside this folder. Run by `python -m citymesh.contracts.build`.
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const MODULES = path.join(__dirname, "node_modules");
const ALLOWED_PREFIX = "@openzeppelin/";

const imports = {};

function findImports(importPath) {
  if (!importPath.startsWith(ALLOWED_PREFIX) || importPath.includes("..")) {
    return { error: `import ${importPath} is outside ${ALLOWED_PREFIX}` };
  }
  const file = path.join(MODULES, importPath);
  try {
    const contents = fs.readFileSync(file, "utf8");
    imports[importPath] = contents;
    return { contents };
  } catch (err) {
    return { error: `cannot read ${file}: ${err.message}` };
  }
}

const input = fs.readFileSync(0, "utf8");
const output = JSON.parse(solc.compile(input, { import: findImports }));
process.stdout.write(JSON.stringify({ version: solc.version(), output, imports }));
