//! Compiles `proto/` with protox (pure Rust, no protoc) and writes the
//! prost messages and the tonic server and client into `src/grpc/gen/`,
//! headed by the SHA-256 of the inputs, which a unit test of Perch checks.

use std::path::PathBuf;

fn main() {
    let root: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: perch-protogen <perch checkout>")
        .into();
    let proto = root.join("proto");
    let out = root.join("src/grpc/gen");
    std::fs::create_dir_all(&out).expect("create src/grpc/gen");
    let files = ["dapr/proto/runtime/v1/dapr.proto"];
    let fds = protox::compile(files, [&proto]).expect("compile protos");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("generate code");
}
