//! The `gossamer` binary: a thin shell over the library's commands.

/// The node allocates and frees many small objects on many threads (events, their
/// strings and maps, sled's nodes); mimalloc does that with less contention than glibc.
/// Measured at 10M events (docs/benchmarks.md), glibc's allocator held half the
/// resident memory but took the counts and phrase queries from 4-5 to 8-12 ms. Without
/// the `mimalloc` feature the system allocator is used (so heap profilers such as
/// heaptrack see every allocation), with one arena per core.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    limit_malloc_arenas();
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    no_transparent_huge_pages();
    gossamer::cli::main()
}

/// mimalloc asks the kernel for transparent huge pages (2 MiB) over its arenas, and a
/// huge page stays resident while any 4 KiB of it is in use, so what mimalloc frees
/// mostly stays resident. With them, a node with a 200 MiB memory budget peaked at
/// 284-343 MiB taking a 280 MB burst; without them at 185-200 MiB (the
/// `memory_budget` test). The process opts out here, before its threads start;
/// `MIMALLOC_ALLOW_THP=1` in the environment keeps them.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's address space.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// glibc gives threads that contend arenas of their own, up to eight per core, and each
/// arena keeps what was freed in it. One arena per core (two at least) took the query
/// bench's peak at 1M events from 737 MiB to 469 MiB (1,440 MiB with mimalloc). A
/// `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as libc::c_int);
    }
}
