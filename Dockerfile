# The perch image the injector's manifests name (`--sidecar-image`, the
# injector Deployment): `docker build -t <registry>/perch:0.1.0 .` and
# push it, then set that name in k8s/injector/deployment.yaml. The sidecar
# and the injector are the same binary (`perch run`, `perch injector`).
# Not built on the development machines (no container engine there).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin perch

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/perch /usr/local/bin/perch
# The injected sidecar runs as 65532 (restricted Pod Security).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/perch"]
