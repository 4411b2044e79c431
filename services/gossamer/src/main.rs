//! The `gossamer` binary: a thin shell over the library's commands.

/// The node allocates and frees many small objects on several threads (events, their
/// strings and maps, sled's nodes); mimalloc does that with less contention than glibc.
/// Without the `mimalloc` feature the system allocator is used (so heap profilers such as
/// heaptrack see every allocation).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gossamer::cli::main()
}
