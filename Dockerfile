# syntax=docker/dockerfile:1
# Build stage: compile the operator with the locked dependency set.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace (see .dockerignore): cargo resolves every member's manifest, and builds
# only the operator package.
COPY . .
RUN cargo build --release --locked -p baton --bin baton \
 && strip target/release/baton

# Runtime stage: distroless, non-root, just the binary (rustls: no OpenSSL needed).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/baton /usr/local/bin/baton
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/baton"]
CMD ["run"]
