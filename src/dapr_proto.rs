//! Dapr's protocol messages and services for the part Perch speaks,
//! generated from `proto/` by `scripts/protogen.sh` into `grpc/gen/` and
//! committed (see [`crate::grpc`]). A leaf: the gRPC server and the
//! delivery engine's gRPC app client both use it.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!("grpc/gen/dapr.proto.runtime.v1.rs");
