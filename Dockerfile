# syntax=docker/dockerfile:1
# The edge server (splitstream-edge) as a container: a build stage with the Rust
# toolchain, a runtime stage with the binary only, run as a non-root user.
#
#   docker build -t splitstream-edge .          (or: buildah bud -t splitstream-edge .)
#   docker run --rm -p 4433:4433/udp -p 9464:9464 -v $PWD/edge:/etc/splitstream:ro \
#       splitstream-edge --config /etc/splitstream/edge.toml
#
# See docs/deploy.md for running a fleet on Kubernetes (deploy/k8s/).

# Base images as arguments, for a mirror or an air-gapped registry:
#   --build-arg BUILD_IMAGE=registry.local/rust:1.90-slim-bookworm
# Rust 1.90: the oldest that builds Cargo.lock as it stands (ordered-float 5.5 needs it).
ARG BUILD_IMAGE=docker.io/library/rust:1.90-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The whole workspace (cargo resolves every member's manifest); .dockerignore trims it.
# Registry and target are cache mounts, so a rebuild after a source edit is incremental.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p splitstream-tail --bin splitstream-edge \
    && install -D -m 0755 target/release/splitstream-edge /out/splitstream-edge

FROM ${RUNTIME_IMAGE} AS runtime
# libvulkan1: the Vulkan loader wgpu opens on a GPU node (the driver's ICD comes from
# the node, e.g. the NVIDIA container toolkit); without a GPU the edge runs on the CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvulkan1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin splitstream
COPY --from=build /out/splitstream-edge /usr/local/bin/splitstream-edge
USER 10001:10001
# 4433/udp: QUIC (devices). 9464/tcp: /metrics and /healthz (give --metrics 0.0.0.0:9464).
EXPOSE 4433/udp 9464/tcp
ENTRYPOINT ["/usr/local/bin/splitstream-edge"]
CMD ["--help"]
