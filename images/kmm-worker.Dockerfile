# syntax=docker/dockerfile:1
# kmm-worker: the program inside the worker pods, which loads and unloads kernel modules on a node
# (`kmm-worker kmod load|unload <config> --pull`).
# Build from the repository root:
#   docker build -f images/kmm-worker.Dockerfile -t kmm-worker:latest .
#
# What it needs, and why it runs as root:
# - kmod: kmm-worker runs `modprobe -d <dirName>` (init_module/delete_module need CAP_SYS_MODULE in
#   the host's initial user namespace);
# - write access to /sys/module/firmware_class/parameters/path (worker.setFirmwareClassPath) and to
#   the firmware host directory (worker.firmwareHostPath, /var/lib/firmware by default);
# - CA certificates to pull the kmod image over HTTPS.
# The spoke renders worker pods as root (worker.runAsUser, default 0), privileged, with SELinux
# type spc_t (worker.seLinuxType), /lib/modules mounted read-only and only the firmware
# directory writable: loading a module is full control of the node whatever the capability set,
# so namespaces holding Modules must allow privileged pods (README.md, "Security").

FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p kmm-spoke --bin kmm-worker \
    && install -D -m 0755 target/release/kmm-worker /out/kmm-worker

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends kmod ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/kmm-worker /usr/local/bin/kmm-worker
USER 0:0
ENTRYPOINT ["/usr/local/bin/kmm-worker"]
CMD ["--help"]
