//! Dapr's errors over gRPC: the code daprd answers with, and the
//! `google.rpc.Status` details (`ErrorInfo`, `ResourceInfo`) the SDKs
//! parse (Python's `DaprGrpcError`), in `grpc-status-details-bin`. The
//! three detail messages are written here (a dozen fields) rather than
//! pulling in `tonic-types`.

use prost::Message;
use tonic::{Code, Status};

use crate::errors::ApiError;

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(btree_map = "string, string", tag = "3")]
    metadata: std::collections::BTreeMap<String, String>,
}

/// `google.rpc.ResourceInfo`.
#[derive(Clone, PartialEq, Message)]
struct ResourceInfo {
    #[prost(string, tag = "1")]
    resource_type: String,
    #[prost(string, tag = "2")]
    resource_name: String,
    #[prost(string, tag = "3")]
    owner: String,
    #[prost(string, tag = "4")]
    description: String,
}

/// The gRPC code daprd answers a publish error with (its
/// `pkg/api/errors/pubsub.go`): a broker failure is `Internal`, scoping is
/// `PermissionDenied`, a body over the limit `ResourceExhausted`, every
/// other bad request (unknown pubsub included) `InvalidArgument`.
pub fn code_of(e: &ApiError) -> Code {
    match (e.reason, e.status) {
        ("DAPR_PUBSUB_PUBLISH_MESSAGE", _) => Code::Internal,
        ("DAPR_PUBSUB_FORBIDDEN", _) => Code::PermissionDenied,
        ("DAPR_BODY_TOO_LARGE", _) => Code::ResourceExhausted,
        (_, 500) if e.reason == "DAPR_HEALTH_NOT_READY" => Code::Unavailable,
        _ => Code::InvalidArgument,
    }
}

/// The `Status` for `e`, with daprd's details. `DAPR_PUBSUB_NOT_FOUND`
/// carries no `ResourceInfo` over gRPC (as daprd's).
pub fn status_of(e: &ApiError) -> Status {
    let code = code_of(e);
    let mut details = vec![];
    if let Some(name) = e
        .resource
        .as_ref()
        .filter(|_| e.reason != "DAPR_PUBSUB_NOT_FOUND")
    {
        details.push(Any {
            type_url: "type.googleapis.com/google.rpc.ResourceInfo".into(),
            value: ResourceInfo {
                resource_type: "pubsub".into(),
                resource_name: name.clone(),
                owner: String::new(),
                description: e.message.clone(),
            }
            .encode_to_vec(),
        });
    }
    details.push(Any {
        type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
        value: ErrorInfo {
            reason: e.reason.into(),
            domain: "dapr.io".into(),
            metadata: e.metadata.clone(),
        }
        .encode_to_vec(),
    });
    let body = RpcStatus {
        code: code as i32,
        message: e.message.clone(),
        details,
    }
    .encode_to_vec();
    Status::with_details(code, e.message.clone(), body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_errors_carry_daprds_code_and_details() {
        let e = ApiError::forbidden("pubsub", "t", "app");
        let s = status_of(&e);
        assert_eq!(s.code(), Code::PermissionDenied);
        let st = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(st.code, Code::PermissionDenied as i32);
        let types: Vec<&str> = st.details.iter().map(|d| d.type_url.as_str()).collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/google.rpc.ResourceInfo",
                "type.googleapis.com/google.rpc.ErrorInfo"
            ]
        );
        let info = ErrorInfo::decode(st.details[1].value.as_slice()).unwrap();
        assert_eq!(info.reason, "DAPR_PUBSUB_FORBIDDEN");
        assert_eq!(info.metadata["topic"], "t");
        let nf = status_of(&ApiError::pubsub_not_found("x", &Default::default()));
        assert_eq!(nf.code(), Code::InvalidArgument);
        let st = RpcStatus::decode(nf.details()).unwrap();
        assert_eq!(st.details.len(), 1, "no ResourceInfo for not-found");
        assert_eq!(
            code_of(&ApiError::publish_failed("p", "t", "down")),
            Code::Internal
        );
        assert_eq!(
            code_of(&ApiError::body_too_large(10)),
            Code::ResourceExhausted
        );
    }
}
