//! Links the `perch` binary with packed relative relocations (`DT_RELR`,
//! `-z pack-relative-relocs`) on Linux with glibc: a position-independent
//! executable otherwise carries 1.2 MB of `.rela.dyn` entries that the
//! loader reads (and keeps resident) at every start, about 1.3 MiB of idle
//! RSS (README, Benchmarks: idle RSS). Needs GNU ld 2.38+ or lld 15+ to
//! link and glibc 2.36+ to run (Debian 12, Ubuntu 22.10, RHEL 10). With
//! an older linker or glibc, or to run the binary on an older glibc, build
//! with `PERCH_NO_RELR=1`, which leaves the option out.

fn main() {
    println!("cargo:rerun-if-env-changed=PERCH_NO_RELR");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let opted_out = std::env::var_os("PERCH_NO_RELR").is_some_and(|v| v != "0");
    if os == "linux" && env == "gnu" && matches!(arch.as_str(), "x86_64" | "aarch64") && !opted_out
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
