// Official Durable Streams server conformance suite, run through vitest.
// The published CLI of the package finds no test files with vitest 4, so the
// suite is imported as a library here. run.sh starts the server and sets:
//   CONFORMANCE_TEST_URL  server origin, e.g. http://127.0.0.1:4437 (required)
//   LONG_POLL_TIMEOUT_MS  the server's long-poll timeout in ms (default 1000)
//   SUBSCRIPTIONS=1       also run the opt-in subscription tests
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) {
  throw new Error(
    "CONFORMANCE_TEST_URL is not set; run tests/conformance/run.sh, or set it to the server origin",
  )
}

runConformanceTests({
  baseUrl,
  longPollTimeoutMs: Number(process.env.LONG_POLL_TIMEOUT_MS ?? 1000),
  subscriptions: process.env.SUBSCRIPTIONS === "1",
})
