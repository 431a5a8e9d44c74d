# Multi-stage build from source, for machines that can pull images:
#
#   docker build -t discovery-demo:latest .
#   docker compose up
#
# It produces the same image as `cargo xtask docker`, which needs no
# registry at all (it assembles a FROM scratch image from binaries built on
# the host).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        -p discovery-server --bin discovery \
        -p demo-server --bin demo-server \
        -p demo-client --bin demo-client

FROM debian:bookworm-slim
COPY --from=build /src/target/release/discovery /src/target/release/demo-server /src/target/release/demo-client /usr/local/bin/
COPY configs/docker/ /etc/discovery/
USER 65534:65534
CMD ["/usr/local/bin/discovery"]
