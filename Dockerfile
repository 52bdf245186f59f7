# eligo, built from source. Two stages: a Rust toolchain builds the server and
# the shipped policy plugins; a slim Debian image runs them as a non-root user.
#
#   docker build -t eligo .
#   docker run -p 8001:8001 -p 8002:8002 -v "$PWD/policies:/plugins" eligo
#
# Ports: 8001 nodes (ws), 8002 workers (ws), 8003 admin (health, metrics, API,
# dashboard). The admin port listens on all interfaces inside the container:
# set ELIGO_ADMIN_TOKEN before publishing it.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
ENV CARGO_BUILD_JOBS=2
RUN cargo build --release --locked --bin eligo \
 && cargo xtask plugins \
 && mkdir -p /out/plugins \
 && cp target/release/eligo /out/eligo \
 && cp target/plugins/seed-rules.wasm target/plugins/pow-check.wasm target/plugins/tag-router.wasm /out/plugins/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 eligo \
 && useradd --system --uid 10001 --gid eligo --home-dir /data --shell /usr/sbin/nologin eligo \
 && mkdir -p /plugins /data \
 && chown eligo:eligo /plugins /data
COPY --from=build /out/eligo /usr/local/bin/eligo
# The shipped policies, for operators to copy into /plugins; with /plugins
# empty, the built-in seed rules (the original system's) serve.
COPY --from=build /out/plugins/ /usr/share/eligo/plugins/
ENV ELIGO_NODE_LISTEN=0.0.0.0:8001 \
    ELIGO_WORKER_LISTEN=0.0.0.0:8002 \
    ELIGO_ADMIN_LISTEN=0.0.0.0:8003 \
    ELIGO_PLUGINS_DIR=/plugins \
    ELIGO_DATA_DIR=/data \
    ELIGO_LOG_FORMAT=json
USER 10001:10001
WORKDIR /data
VOLUME ["/plugins", "/data"]
EXPOSE 8001 8002 8003
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8003 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["eligo"]
CMD ["serve"]
