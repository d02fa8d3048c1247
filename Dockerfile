# syntax=docker/dockerfile:1.7
#
# One image for the whole suite: the five service binaries (intake, case-management, sla-timer,
# feedback-survey, performance-scoring); each Kubernetes Deployment runs its own as the command.
# One image rather than five because the services share one workspace, one dependency graph and
# one release version: a single build compiles the shared crates once, and the release has one
# digest to scan, sign and promote, so the five services can never run mismatched builds. The
# binaries are small (statically linked Rust, glibc only), so the shared image stays small.
#
#   docker build -t complaints:0.1.0 .
#   docker run --rm -e DATABASE_URL=... complaints:0.1.0 /usr/local/bin/intake   (or: intake migrate)
#
# Checked in CI by deploy/verify (hadolint, and every binary named here is a workspace bin target).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# No protoc needed: build.rs compiles the protos with protox. No OpenSSL: nothing links it.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin intake --bin case-management --bin sla-timer \
        --bin feedback-survey --bin performance-scoring \
 && mkdir -p /out \
 && cp target/release/intake target/release/case-management target/release/sla-timer \
       target/release/feedback-survey target/release/performance-scoring /out/

# Runtime: glibc, libgcc, CA certificates and tzdata; no shell, no package manager. Runs as the
# image's non-root user 65532 (the Helm chart also enforces runAsNonRoot, a read-only root
# filesystem and no capabilities).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="complaints" \
      org.opencontainers.image.description="Complaint handling services: intake, case-management, sla-timer, feedback-survey, performance-scoring" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# gRPC (GRPC_LISTEN_ADDR; the chart sets 0.0.0.0:50051 for every service) and metrics
# (METRICS_LISTEN_ADDR; the chart sets 0.0.0.0:9090).
EXPOSE 50051 9090
ENV LOG_FORMAT=json
# No default service: the command names the binary, e.g. ["/usr/local/bin/sla-timer"].
CMD ["/usr/local/bin/intake"]
