#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    accessgate::cli::main()
}
