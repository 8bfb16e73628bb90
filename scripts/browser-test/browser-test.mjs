// A real browser on another origin reads a stream of a server with
// access control on: `fetch` with `Authorization: Bearer` (which needs a
// CORS preflight) and `EventSource` with the token in `auth.query_param`;
// without a token the browser gets 401. Keys and tokens are made here.
//
// Usage: node browser-test.mjs <server binary>
// Environment: CHROMIUM (default: /usr/bin/chromium, Debian's package).
import { spawn } from "node:child_process";
import { generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

const serverBin = process.argv[2];
if (!serverBin) {
  console.error("usage: node browser-test.mjs <server binary>");
  process.exit(2);
}

const b64url = (data) => Buffer.from(data).toString("base64url");
const { publicKey, privateKey } = generateKeyPairSync("ed25519");
const jwk = { ...publicKey.export({ format: "jwk" }), kid: "browser-1", alg: "EdDSA", use: "sig" };
function token(grants, ttlSecs) {
  const header = b64url(JSON.stringify({ alg: "EdDSA", kid: "browser-1", typ: "JWT" }));
  const claims = b64url(
    JSON.stringify({ sub: "browser-user", exp: Math.floor(Date.now() / 1000) + ttlSecs, ds: grants }),
  );
  const input = `${header}.${claims}`;
  return `${input}.${b64url(sign(null, Buffer.from(input), privateKey))}`;
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));
}

async function freePort() {
  const probe = createServer();
  const port = await listen(probe);
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// The page's origin: another port, so every request is cross-origin.
const page = createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>reader</title>");
});
const pagePort = await listen(page);
const pageOrigin = `http://127.0.0.1:${pagePort}`;

const dir = mkdtempSync(join(tmpdir(), "ds-browser-"));
writeFileSync(join(dir, "jwks.json"), JSON.stringify({ keys: [jwk] }));
const apiPort = await freePort();
const api = `http://127.0.0.1:${apiPort}`;
const server = spawn(serverBin, [], {
  env: {
    DS_SERVER__BIND_ADDRESS: `127.0.0.1:${apiPort}`,
    DS_AUTH__MODE: "token",
    DS_AUTH__JWKS_PATH: join(dir, "jwks.json"),
    DS_AUTH__QUERY_PARAM: "access_token",
    DS_HTTP__CORS_ORIGINS: pageOrigin,
    RUST_LOG: "warn",
  },
  stdio: ["ignore", "inherit", "inherit"],
});

let browser;
let failed = false;
function check(what, ok, detail) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${ok ? "" : `: ${detail}`}`);
  failed ||= !ok;
}

try {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${api}/healthz`)).ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error("the server did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  const writer = token([{ paths: ["/v1/stream/**"], ops: ["create", "append"] }], 600);
  const reader = token([{ paths: ["/v1/stream/tenant-a/**"], ops: ["read"] }], 600);
  const stream = `${api}/v1/stream/tenant-a/feed`;
  const auth = { authorization: `Bearer ${writer}`, "content-type": "text/plain" };
  check("create", (await fetch(stream, { method: "PUT", headers: auth })).status === 201);
  check("append", (await fetch(stream, { method: "POST", headers: auth, body: "hello" })).ok);

  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const tab = await browser.newPage();
  await tab.goto(pageOrigin);
  const results = await tab.evaluate(
    async ({ stream, reader }) => {
      const out = {};
      const withHeader = await fetch(`${stream}?offset=-1`, {
        headers: { Authorization: `Bearer ${reader}` },
      });
      out.fetchStatus = withHeader.status;
      out.fetchBody = await withHeader.text();
      out.fetchCache = withHeader.headers.get("cache-control");
      const without = await fetch(`${stream}?offset=-1`);
      out.anonymousStatus = without.status;
      out.challenge = without.headers.get("www-authenticate");
      out.sse = await new Promise((resolve) => {
        const source = new EventSource(`${stream}?offset=-1&live=sse&access_token=${reader}`);
        // Generous: a loaded CI machine may take seconds to connect.
        const timer = setTimeout(() => {
          source.close();
          resolve("timeout");
        }, 30_000);
        source.addEventListener("data", (event) => {
          clearTimeout(timer);
          source.close();
          resolve(event.data);
        });
      });
      return out;
    },
    { stream, reader },
  );
  check("fetch with Authorization (preflighted)", results.fetchStatus === 200, JSON.stringify(results));
  check("fetch reads the data", results.fetchBody === "hello", results.fetchBody);
  check("an authenticated read is private", /private/.test(results.fetchCache ?? "") && !/public/.test(results.fetchCache ?? ""), results.fetchCache);
  check("no token: 401 readable cross-origin", results.anonymousStatus === 401, results.anonymousStatus);
  check("WWW-Authenticate exposed to the page", results.challenge === "Bearer", results.challenge);
  check("EventSource with the query-parameter token", results.sse === "hello", results.sse);
} catch (error) {
  check("browser test", false, error?.stack ?? String(error));
} finally {
  await browser?.close();
  server.kill("SIGTERM");
  page.close();
}
console.log(failed ? "browser: FAILED" : "browser: passed");
process.exit(failed ? 1 : 0);
