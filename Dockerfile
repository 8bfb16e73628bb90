# syntax=docker/dockerfile:1
#
# Container image for durable-streams-server.
#
#   docker build -t durable-streams-server .
#   docker run --rm -p 4437:4437 durable-streams-server
#
# Configuration comes from DS_* environment variables (see README.md).
# Configuration files are not copied in yet; the layered-config work adds
# them.

# ---------------------------------------------------------------- builder ---
FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Dependencies first. This layer depends only on the manifest and the lock
# file, so source edits do not recompile every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
# The copied sources may carry older timestamps than the placeholder build
# above; touching the crate roots makes cargo rebuild this crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/durable-streams-server /durable-streams-server

# ---------------------------------------------------------------- runtime ---
FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="durable-streams-server" \
      org.opencontainers.image.description="Server for the Durable Streams protocol: append-only HTTP streams with catch-up, long-poll and SSE reads" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# A fixed, unprivileged identity, so volume ownership and Kubernetes
# securityContext (runAsUser: 10001) can rely on it.
RUN groupadd --system --gid 10001 durable-streams \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin durable-streams \
    && mkdir -p /var/lib/durable-streams \
    && chown 10001:10001 /var/lib/durable-streams

COPY --from=builder /durable-streams-server /usr/local/bin/durable-streams-server

USER 10001:10001
WORKDIR /var/lib/durable-streams
ENV DS_SERVER__BIND_ADDRESS=0.0.0.0:4437
EXPOSE 4437
# SIGTERM starts the drain described in README.md ("Health and shutdown").
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the image has no HTTP client. Probe /healthz and /readyz
# from the orchestrator instead.
ENTRYPOINT ["/usr/local/bin/durable-streams-server"]
