// A foreign client (ethers.js v6) against a coopml chain node: reads views, queries events with a
// single-string address filter, sends a transaction, and decodes a custom-error revert by name
// through the ABI. Input: a JSON file path (argv[2]); output: one JSON object on stdout.
'use strict';
const fs = require('fs');
const { ethers } = require('ethers');

async function main() {
  const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const provider = new ethers.JsonRpcProvider(cfg.url, undefined, { staticNetwork: true, cacheTimeout: -1 });
  provider.pollingInterval = 100;
  const wallet = new ethers.Wallet(cfg.privateKey, provider);
  const abi = JSON.parse(fs.readFileSync(cfg.artifact, 'utf8')).abi;
  const contract = new ethers.Contract(cfg.address, abi, wallet);
  const out = { ethers: ethers.version, chainId: Number((await provider.getNetwork()).chainId) };

  // views
  for (const [name, args] of cfg.views) out[`view:${name}`] = (await contract[name](...args)).toString();

  // events: ethers' own filter and a raw single-string address filter
  const events = await contract.queryFilter(cfg.event, cfg.fromBlock, 'latest');
  out.events = events.map((e) => ({ name: e.fragment ? e.fragment.name : null, block: e.blockNumber }));
  const logs = await provider.getLogs({ address: cfg.address, fromBlock: cfg.fromBlock, toBlock: 'latest' });
  out.rawLogCount = logs.length;

  // a plain transaction, mined
  const tx = await wallet.sendTransaction({ to: cfg.payee, value: 12345n });
  const receipt = await tx.wait(1, 60000);
  out.sent = { hash: tx.hash, status: receipt.status, block: receipt.blockNumber, nonce: tx.nonce, type: tx.type };

  // a custom error, decoded by name from revert data (estimateGas and staticCall)
  for (const how of ['send', 'staticCall']) {
    try {
      if (how === 'send') await (await contract[cfg.revert.fn]()).wait();
      else await contract[cfg.revert.fn].staticCall();
      out[`revert:${how}`] = { name: null };
    } catch (err) {
      // ethers decodes by itself on staticCall (err.revert); on a send the estimateGas error
      // carries the revert data, decoded through the contract's ABI
      const parsed = err.data ? contract.interface.parseError(err.data) : null;
      out[`revert:${how}`] = { native: err.revert ? err.revert.name : null, name: parsed ? parsed.name : null,
                               code: err.code, data: err.data || null };
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err) + '\n'); process.exit(1); });
