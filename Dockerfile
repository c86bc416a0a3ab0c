# syntax=docker/dockerfile:1
# Baton's operator image: `baton run` as a non-root user on a distroless base.
#
# The base images are arguments so a machine that cannot pull them can build on bases of its own
# (`make image` makes both from Debian packages and builds with buildah; see docs/operations.md).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, in a layer of their own that only the manifests and the lock file decide:
# every workspace member's manifest, with empty stand-ins for the sources cargo needs to load it.
COPY Cargo.toml Cargo.lock ./
COPY crates/baton-node/Cargo.toml crates/baton-node/
COPY crates/baton-testkit/Cargo.toml crates/baton-testkit/
COPY crates/kubectl-baton/Cargo.toml crates/kubectl-baton/
COPY tests/Cargo.toml tests/
RUN mkdir -p src crates/baton-testkit/src crates/kubectl-baton/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/baton-testkit/src/lib.rs \
 && cargo build --release --locked -p baton --bin baton \
 && rm -rf src target/release/baton target/release/deps/baton-* target/release/deps/libbaton-* \
      target/release/.fingerprint/baton-*
# Then the operator itself (no test hooks: the test-hooks feature is off).
COPY src src
RUN cargo build --release --locked -p baton --bin baton

# Runtime: the binary and nothing else, as the distroless non-root user.
FROM ${RUNTIME_IMAGE}
COPY --from=build /src/target/release/baton /usr/local/bin/baton
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["run"]
