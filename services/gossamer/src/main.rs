//! The `gossamer` binary: a thin shell over the library's commands.

/// The node allocates and frees many small objects on several threads (events, their
/// strings and maps, sled's nodes); mimalloc does that with less contention than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gossamer::cli::main()
}
