//! The app's answer to a delivery: any status and body is read as
//! SUCCESS, RETRY or DROP, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((s, rest)) => (Some(100 + u16::from(*s) * 2), rest),
        None => (None, data),
    };
    let _ = perch::delivery::outcome::classify(status, body);
});
