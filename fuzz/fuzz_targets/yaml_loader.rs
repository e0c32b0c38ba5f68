//! The YAML loader on one file of arbitrary bytes: resources, or a report
//! of problems; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::config::options::LoadOptions;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DIR: std::path::PathBuf = {
            let d = std::env::temp_dir().join(format!("perch-fuzz-yaml-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            d
        };
    }
    DIR.with(|dir| {
        std::fs::write(dir.join("r.yaml"), data).unwrap();
        let opts = LoadOptions::from_env("fuzz-app", None);
        let _ = perch::config::load(&[dir.clone()], &opts);
    });
});
