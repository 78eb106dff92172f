# The `matchplane` binary as an image: the same release build as README.md's
# `cargo build --release` (one package of the workspace, Cargo.lock enforced),
# run as a non-root user from a slim Debian. See deploy/README.md (Phase B).
#
#   docker build -t matchplane .        # or: podman build -t matchplane .
#   docker run --rm matchplane --help

# The toolchain must satisfy the workspace's rust-version (Cargo.toml); the
# image is pinned so a rebuild of the same commit gets the same compiler.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=docker.io/library/debian:trixie-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artefacts between builds on one
# machine without putting them in a layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p matchplane-cli --locked \
    && install -D -m 0755 target/release/matchplane /out/matchplane

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: `rediss://` and the player-JWKS fetch verify against the
# system roots. curl: the HEALTHCHECK below (the binary has no probe command).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/matchplane --create-home matchplane
COPY --from=build /out/matchplane /usr/local/bin/matchplane
USER 10001:10001
WORKDIR /var/lib/matchplane
# Both planes bind loopback by default; in a container they must listen on
# every interface. Each subcommand reads its own variable.
ENV MATCHPLANE_BIND=0.0.0.0 \
    MATCHPLANE_GAME_BIND=0.0.0.0 \
    MATCHPLANE_DATA_DIR=/var/lib/matchplane \
    MATCHPLANE_LOG_FORMAT=json
# 3000: control plane (API, /realtime, /health); 9100: its --metrics-bind
# listener when set; 8080: game server.
EXPOSE 3000 9100 8080
# Probes whichever plane this container runs: the control plane on 3000, else
# the game server on 8080. Kubernetes ignores HEALTHCHECK and uses its probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/health >/dev/null || curl -fsS http://127.0.0.1:8080/health >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/matchplane"]
CMD ["--help"]
