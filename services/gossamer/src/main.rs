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
    #[cfg(feature = "mimalloc")]
    tune_mimalloc();
    gossamer::cli::main()
}

/// mimalloc's index of its `purge_delay` option (`mi_option_purge_delay` in mimalloc.h,
/// the same in its versions 2 and 3; the Rust bindings do not name it).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Half of mimalloc's own; measured in docs/benchmarks.md.
#[cfg(feature = "mimalloc")]
const PURGE_DELAY_MS: std::os::raw::c_long = 5;

/// Two mimalloc settings kept what it freed resident; both were measured with the
/// `memory_budget` test (a 280 MB burst into a node with a 256 MiB budget):
/// - Transparent huge pages: mimalloc asks the kernel for them over its arenas, and a
///   2 MiB page stays resident while any 4 KiB of it is in use (341-386 MiB with them).
///   The process opts out, before its threads start; `MIMALLOC_ALLOW_THP=1` keeps them.
/// - The purge delay: mimalloc gives freed pages back to the system 10 ms after they
///   are freed (ten times that for whole arenas), and a node storing a burst, which
///   frees all the time, held 277-357 MiB. With [`PURGE_DELAY_MS`] it held 221-235 MiB.
///   Giving them back at once (0) held as well, but made the 10M-event counts about 7
///   times slower, as freed pages were faulted in again. `MIMALLOC_PURGE_DELAY` in the
///   environment wins.
#[cfg(feature = "mimalloc")]
fn tune_mimalloc() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's address space.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options; it reads them at each purge.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
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
