#!/usr/bin/env node
// Compile every contracts/**/*.sol with the pinned npm solc (standard JSON) and write one
// artifact per contract (ABI + bytecode) to OUT_DIR. Deterministic: same sources -> same bytes.
// contracts/forge/ (the Foundry invariant suite, run by scripts/forge.sh) is not packaged.
// Usage: node contracts/compile.cjs OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const EVM_VERSION = 'cancun'; // executed by both py-evm 0.12 (CancunVM/PragueVM) and anvil 1.7
const OPTIMIZER_RUNS = 200;
const root = __dirname;
const outDir = process.argv[2];
if (!outDir) { console.error('usage: node contracts/compile.cjs OUT_DIR'); process.exit(2); }

function walk(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'forge' ? [] : walk(p);
    return e.name.endsWith('.sol') ? [p] : [];
  }).sort();
}

const sources = {};
for (const file of walk(root)) {
  sources[path.relative(root, file).split(path.sep).join('/')] = { content: fs.readFileSync(file, 'utf8') };
}
const settings = {
  evmVersion: EVM_VERSION,
  optimizer: { enabled: true, runs: OPTIMIZER_RUNS },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};
const output = JSON.parse(solc.compile(JSON.stringify({ language: 'Solidity', sources, settings })));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

fs.mkdirSync(outDir, { recursive: true });
for (const [sourceName, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces
    const artifact = {
      contractName: name,
      sourceName,
      compiler: { name: 'solc-js', version: solc.version(), evmVersion: EVM_VERSION, optimizerRuns: OPTIMIZER_RUNS },
      abi: c.abi,
      bytecode: '0x' + c.evm.bytecode.object,
      deployedBytecode: '0x' + c.evm.deployedBytecode.object,
    };
    fs.writeFileSync(path.join(outDir, name + '.json'), JSON.stringify(artifact, null, 1) + '\n');
  }
}
console.log(`compiled ${Object.keys(sources).length} sources with solc ${solc.version()} (evm ${EVM_VERSION}) into ${outDir}`);
