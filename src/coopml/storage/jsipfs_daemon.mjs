// Start a js-ipfs daemon (the same Daemon class `jsipfs daemon` uses) with preload off and,
// when $IPFS_PATH/swarm.key exists, a libp2p pre-shared-key connection protector: js-ipfs has no
// swarm.key support of its own, and the paper's testbed ran IPFS as a private network.
// Usage: node jsipfs_daemon.mjs NODE_MODULES_DIR   (repo from $IPFS_PATH)
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const nodeModules = process.argv[2]
const load = (rel) => import(pathToFileURL(path.join(nodeModules, rel)).href)
const { Daemon } = await load('ipfs-daemon/src/index.js')
const { preSharedKey } = await load('libp2p/dist/src/pnet/index.js')

const repo = process.env.IPFS_PATH
const keyFile = path.join(repo, 'swarm.key')
const options = { repo, preload: { enabled: false } }
if (fs.existsSync(keyFile)) {
  options.libp2p = { connectionProtector: preSharedKey({ psk: new Uint8Array(fs.readFileSync(keyFile)) }) }
  console.log('private network: swarm.key loaded')
}
const daemon = new Daemon(options)
await daemon.start()
for (const s of daemon._httpApi._apiServers) console.log(`HTTP API listening on ${s.info.ma}`)
console.log('Daemon is ready')
const stop = async () => { await daemon.stop(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
