# syntax=docker/dockerfile:1
#
# Container image for durable-streams-server.
#
#   docker build --build-arg REVISION="$(git rev-parse --short HEAD)" \
#     -t durable-streams-server:0.1.0 .
#   docker run --rm -p 4437:4437 durable-streams-server:0.1.0
#
# The image ships the configuration profiles of config/ in
# /etc/durable-streams/config (DS_CONFIG_DIR); pick one with DS_PROFILE or
# --profile and override keys with DS_* variables or --config FILE (see
# README-config.md). It runs as UID/GID 10001, works with a read-only root
# filesystem (the server writes only to storage.data_dir: mount a volume at
# /var/lib/durable-streams for the prod profiles), listens on 4437
# (API) and 9464 (metrics and probes, when
# observability.metrics.bind_address is set), and drains on SIGTERM. It
# carries Debian's CA bundle, so https webhooks, JWKS URLs and OTLP
# collectors with public certificates verify, and /bin/sh for the Helm
# chart's backup Jobs. Release images are built for linux/amd64 and
# linux/arm64 by .github/workflows/release.yml, signed, with their digests
# in the release notes.

# ---------------------------------------------------------------- builder ---
FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Dependencies first. This layer depends only on the manifest, the lock file
# and the build script, so source edits do not recompile every crate. The
# registry cache mount keeps downloaded crates across builds.
COPY Cargo.toml Cargo.lock build.rs ./
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/load.rs \
    && cargo build --release --locked \
    && rm -rf src

# The commit shown by --version and in logs; there is no .git in the build
# context (see .dockerignore).
ARG REVISION=unknown
ENV DS_BUILD_COMMIT=${REVISION}
# config/ too: the crate compiles the shipped profiles in (include_str!).
COPY config ./config
COPY src ./src
# The copied sources may carry older timestamps than the placeholder build
# above; touching the crate roots makes cargo rebuild this crate.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs \
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
# securityContext (runAsUser: 10001, fsGroup: 10001) can rely on it. The data
# directory is the only place the server writes; it belongs to group 0 too,
# because OpenShift runs the container as an arbitrary UID in group 0.
RUN groupadd --system --gid 10001 durable-streams \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin durable-streams \
    && mkdir -p /var/lib/durable-streams \
    && chown 10001:0 /var/lib/durable-streams \
    && chmod 0770 /var/lib/durable-streams

# The CA bundle of the build stage (Debian's ca-certificates): the runtime
# base has none, and outbound https (webhooks, JWKS, OTLP) verifies against
# it. SSL_CERT_FILE names it for every TLS library in the binary.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# Profiles and the commented list of every key, read-only, owned by root.
COPY config/ /etc/durable-streams/config/
COPY --from=builder /durable-streams-server /usr/local/bin/durable-streams-server

USER 10001:10001
WORKDIR /var/lib/durable-streams
# Only DS_CONFIG_DIR: DS_* keys set here would beat a --config file (the
# environment is a later layer), and the Helm chart passes its settings
# that way. The listen address defaults to 0.0.0.0:4437 (config/default.toml).
ENV DS_CONFIG_DIR=/etc/durable-streams/config
# 4437: the API (server.bind_address). 9464: metrics, /healthz and /readyz
# on a plain-HTTP listener when observability.metrics.bind_address is set
# (the Helm chart does), so probes and Prometheus need no client certificate
# in mTLS mode.
EXPOSE 4437 9464
# SIGTERM starts the drain described in README.md ("Health and shutdown").
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the image has no HTTP client. Probe /healthz and /readyz
# from the orchestrator instead.
ENTRYPOINT ["/usr/local/bin/durable-streams-server"]
CMD ["serve"]
