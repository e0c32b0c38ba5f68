//! The `perch` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    perch::cli::main()
}
