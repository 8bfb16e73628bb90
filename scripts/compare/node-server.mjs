// Starts the Node reference server (npm @durable-streams/server) for
// scripts/compare.sh: node node-server.mjs <install-dir> <port> [long-poll-ms]
// <install-dir> holds node_modules/@durable-streams/server. In-memory store.
import { pathToFileURL } from "node:url"
import { join } from "node:path"

const [dir, port, longPoll = "1000"] = process.argv.slice(2)
const entry = join(dir, "node_modules", "@durable-streams", "server", "dist", "index.js")
const { DurableStreamTestServer } = await import(pathToFileURL(entry).href)
const server = new DurableStreamTestServer({
  host: "127.0.0.1",
  port: Number(port),
  longPollTimeout: Number(longPoll),
  // The load tool sends no Accept-Encoding; keep the work identical anyway.
  compression: false,
})
await server.start()
console.log(`node reference server on ${server.baseUrl}`)
const stop = async () => {
  await server.stop()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
