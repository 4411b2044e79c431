# The gossamer binary in a small image (used by docker-compose.yml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gossamer

FROM debian:bookworm-slim
COPY --from=build /src/target/release/gossamer /usr/local/bin/gossamer
ENTRYPOINT ["gossamer"]
