//! The `perch` binary: everything lives in the library.
//!
//! The allocator is the system's (glibc) unless the binary is built with
//! `--features mimalloc` or `--features jemalloc`, for the allocator A/B of
//! the benchmarks (README, Benchmarks).

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    perch::cli::main()
}
