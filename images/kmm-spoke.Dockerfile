# syntax=docker/dockerfile:1
# The spoke controller (kmm-spoke run), also its validate and crds commands.
# Build from the repository root:
#   docker build -f images/kmm-spoke.Dockerfile -t kmm-spoke:latest .
# Runs as the non-root user 65532 with a read-only root file system (manifests/spoke/base/deployment.yaml):
# a static-like image holding only the binary, glibc, libgcc and CA certificates (registries).

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p kmm-spoke --bin kmm-spoke \
    && install -D -m 0755 target/release/kmm-spoke /out/kmm-spoke

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/kmm-spoke /usr/local/bin/kmm-spoke
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kmm-spoke"]
CMD ["--help"]
