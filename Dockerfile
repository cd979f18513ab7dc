# syntax=docker/dockerfile:1
#
# Portcullis and its operator in one image.
#
#   docker build -t portcullis .                          # with FoundationDB (default)
#   docker build --build-arg WITH_FDB=false -t portcullis:embedded .   # embedded store only
#
# The service runs as `portcullis serve`; the operator as `portcullis-operator`.

ARG RUST_VERSION=1.91
ARG DEBIAN_RELEASE=bookworm
ARG FDB_VERSION=7.3.43
ARG WITH_FDB=true

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG FDB_VERSION
ARG WITH_FDB
# bindgen (for the FoundationDB bindings) needs libclang; the client package
# provides libfdb_c to link against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libclang-dev \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /out/lib \
 && if [ "${WITH_FDB}" = "true" ]; then \
      curl -fsSL -o /tmp/fdb-clients.deb \
        "https://github.com/apple/foundationdb/releases/download/${FDB_VERSION}/foundationdb-clients_${FDB_VERSION}-1_amd64.deb" \
      && dpkg -i /tmp/fdb-clients.deb \
      && rm /tmp/fdb-clients.deb \
      && cp /usr/lib/libfdb_c.so /out/lib/; \
    fi
WORKDIR /src
COPY . .
# `${features}` is split into arguments on purpose.
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "${WITH_FDB}" = "true" ]; then features="--features portcullis/fdb"; else features=""; fi \
 && cargo build --release --locked -p portcullis -p portcullis-operator ${features} \
 && cp target/release/portcullis target/release/portcullis-operator /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin portcullis
# libfdb_c when built with FoundationDB; the directory is empty otherwise.
COPY --from=builder /out/lib/ /usr/lib/
COPY --from=builder /out/portcullis /out/portcullis-operator /usr/local/bin/
USER 10001:10001
EXPOSE 50051 9090 8080
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090"]
