# syntax=docker/dockerfile:1.7
#
# chartcache container image. Multi-stage: build in the official Rust image, run
# on distroless/cc (glibc, CA roots, no shell, no package manager), as uid 65532.
#
#   docker build -t registry.example.com/chartcache:0.1.0 .
#   docker run --rm -p 8080:8080 registry.example.com/chartcache:0.1.0 \
#     --upstream http://superset.internal:8088
#
# The image reads /etc/chartcache/chartcache.toml (a copy of config/chartcache.toml)
# unless --config says otherwise; the Kubernetes manifests in deploy/ mount their
# own config there and pass --config explicitly. It writes nothing to disk, so a
# read-only root filesystem works. `chartcache healthcheck` probes the admin
# /readyz over loopback (exit 0/1): an exec probe needs no shell or curl. Ports: 8080 proxy, 9090 admin (/metrics,
# /healthz, /readyz; loopback-only unless --admin-listen=0.0.0.0:9090).
#
# Builder and runtime must share a Debian release (the binary links glibc):
# bookworm <-> cc-debian12, trixie <-> cc-debian13.
#
# Pin both base images by digest for reproducible, reviewable builds. The
# digests are not written here because they can only be looked up against the
# registry at release time (`docker buildx imagetools inspect IMAGE`), and a
# stale digest is worse than none; pass them as build args instead:
#   docker build --build-arg BUILDER_DIGEST=@sha256:... \
#                --build-arg RUNTIME_DIGEST=@sha256:... .
# Empty (the default) means the tag alone.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG BUILDER_DIGEST=
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG RUNTIME_DIGEST=
ARG VERSION=0.1.0
ARG REVISION=unknown

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}${BUILDER_DIGEST} AS builder
WORKDIR /src
COPY . .
# rustls only (no OpenSSL); the C parts (zstd, ring, blake3) build with the
# image's gcc. Cache mounts keep the registry and target dir across builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile image --locked --bin chartcache \
 && install -D -m 0755 target/image/chartcache /out/chartcache
# The binary starts and the config it ships with is valid.
RUN /out/chartcache --config config/chartcache.toml --upstream http://127.0.0.1:8088 \
      check-config >/dev/null

FROM ${RUNTIME_IMAGE}${RUNTIME_DIGEST}
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="chartcache" \
      org.opencontainers.image.description="Caching reverse proxy for Apache Superset" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=builder /out/chartcache /usr/local/bin/chartcache
COPY config/chartcache.toml /etc/chartcache/chartcache.toml
ENV CHARTCACHE_CONFIG=/etc/chartcache/chartcache.toml
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["chartcache"]
