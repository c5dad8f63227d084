# syntax=docker/dockerfile:1
# Build: a release binary; no system protoc needed (protox compiles the protos).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY crates crates
COPY src src
RUN cargo build --release --locked && strip target/release/keygate

# Runtime: minimal image, non-root user, config and data as volumes.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/keygate --shell /usr/sbin/nologin keygate \
 && mkdir -p /etc/keygate /var/lib/keygate \
 && chown keygate:keygate /var/lib/keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
USER keygate
VOLUME ["/etc/keygate", "/var/lib/keygate"]
EXPOSE 8443 8444
# The config names its certificates, KEK and `storage.path` (e.g. /var/lib/keygate/data).
ENTRYPOINT ["/usr/local/bin/keygate", "serve"]
CMD ["--config", "/etc/keygate/keygate.toml"]
