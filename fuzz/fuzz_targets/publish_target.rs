//! Percent-decoding and routing of a publish request: what follows
//! `/v1.0/publish/`, then `?` and the query. Must answer Ok or a 400,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rest, query) = match text.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (text, None),
    };
    if let Err(e) = perch::http::publish_target(rest, query) {
        assert_eq!(e.status, 400);
    }
});
