//! A Rust app behind Perch without a Dapr SDK: `subscribe` serves
//! `POST /orders` and reads each delivery as a CloudEvent with the
//! CloudEvents SDK's HTTP binding (Perch delivers structured mode,
//! `application/cloudevents+json`); `publish` builds CloudEvents with the
//! SDK and posts them to Perch's publish API as they are (a CloudEvent
//! body is not wrapped again, so its id and type are the app's).

use std::convert::Infallible;

use bytes::Bytes;
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

#[tokio::main]
async fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "publish" {
        publish().await;
    } else {
        subscribe().await;
    }
}

async fn subscribe() {
    let port = std::env::var("APP_PORT").expect("APP_PORT");
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("bind");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = if parts.uri.path() == "/orders" {
                        match cloudevents::binding::http::to_event(&parts.headers, body.to_vec()) {
                            Ok(event) => {
                                let data = match event.data() {
                                    Some(cloudevents::Data::Json(v)) => v.to_string(),
                                    Some(cloudevents::Data::String(s)) => s.clone(),
                                    Some(cloudevents::Data::Binary(b)) => {
                                        format!("{} bytes", b.len())
                                    }
                                    None => String::new(),
                                };
                                println!(
                                    "received {} {} from {}: {data}",
                                    event.ty(),
                                    event.id(),
                                    event.source()
                                );
                                200
                            }
                            Err(e) => {
                                eprintln!("not a CloudEvent: {e}");
                                400
                            }
                        }
                    } else {
                        404
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn publish() {
    let port = std::env::var("DAPR_HTTP_PORT").expect("DAPR_HTTP_PORT");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    for (id, item) in [(1, "perch"), (2, "sidecar")] {
        let event = EventBuilderV10::new()
            .id(format!("order-{id}"))
            .ty("com.example.order.placed")
            .source("/examples/rust")
            .data(
                "application/json",
                serde_json::json!({"id": id, "item": item}),
            )
            .build()
            .expect("a valid CloudEvent");
        let req = Request::post(format!(
            "http://127.0.0.1:{port}/v1.0/publish/pubsub/orders"
        ))
        .header("content-type", "application/cloudevents+json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&event).expect("JSON"),
        )))
        .unwrap();
        let status = client.request(req).await.expect("publish").status();
        assert_eq!(status, 204, "publish answered {status}");
        println!("published order-{id}");
    }
}
