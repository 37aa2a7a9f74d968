# syntax=docker/dockerfile:1
# The KMM-Hub controller (kmm-hub run), also the validate, crds and sign commands.
# Build from the repository root:
#   docker build -f images/kmm-hub.Dockerfile -t kmm-hub:latest .
# Runs as the non-root user 65532 with a read-only root file system (manifests/hub/deployment.yaml):
# a static-like image holding only the binary, glibc, libgcc and CA certificates (registries).

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p kmm-hub --bin kmm-hub \
    && install -D -m 0755 target/release/kmm-hub /out/kmm-hub

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/kmm-hub /usr/local/bin/kmm-hub
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kmm-hub"]
CMD ["--help"]
