# syntax=docker/dockerfile:1
# Herald image: the `herald` binary on a small non-root runtime.
#
#   docker build -t ghcr.io/herald/herald:0.1.0 .
#
# The binary is the workspace's `herald` package built from Cargo.lock, the same
# package scripts/test.sh builds and the tests (Rust and helm/tests) run, here
# with the release profile. The Helm chart (helm/herald) runs `herald serve` and
# `herald setup` from this image as UID 65532 with a read-only root filesystem.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald \
 && install -D -m 0755 target/release/herald /out/herald

# glibc + libgcc + CA certificates, no shell, user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["herald"]
CMD ["serve"]
