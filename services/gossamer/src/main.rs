//! The `gossamer` binary: a thin shell over the library's commands.

fn main() -> std::process::ExitCode {
    gossamer::cli::main()
}
