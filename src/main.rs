use std::process::ExitCode;

fn main() -> ExitCode {
    layerfs::cli::main()
}
