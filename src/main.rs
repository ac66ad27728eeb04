//! The `slot2lake` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    slot2lake::cli::main()
}
