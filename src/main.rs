//! The `durable-streams-server` binary: parses the command line and hands
//! over to [`durable_streams_server::cli`], which runs the startup phases.

use std::process::ExitCode;

use clap::Parser;
use durable_streams_server::cli::{self, Cli};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    limit_malloc_arenas();
    start_heap_trimmer();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("startup failed: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(cli))
}

/// Caps glibc's malloc at two arenas (it allows eight per core), before any
/// thread starts. Allocation and release of connection buffers then land in
/// fewer heaps, which measured about 14% less resident memory per idle SSE
/// connection (BENCHMARKS.md) at no cost in throughput. An explicit
/// `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    const M_ARENA_MAX: i32 = -8;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes an allocator tunable; no thread other
        // than this one exists yet.
        unsafe {
            mallopt(M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// How often freed heap memory goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
const HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands glibc's free heap pages back to the system once a second.
/// glibc returns only the top of a heap on `free`; the pages of chunks freed
/// in the middle (request buffers, a checkpoint's body, written-out frames)
/// stay resident, so RSS climbed with every burst of work while the memory
/// in use did not (BENCHMARKS.md, "Memory per idle stream": 2 million
/// appends over 100 streams left 21.5 MB in the heaps, 5.2 MB of it in
/// use). `malloc_trim` releases those pages; a page used again costs one
/// page fault.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn start_heap_trimmer() {
    let spawned = std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(HEAP_TRIM_INTERVAL);
                // SAFETY: malloc_trim takes no pointers; it locks each arena
                // while it releases that arena's free pages.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(error) = spawned {
        eprintln!("cannot start the heap trimmer (free memory stays resident): {error}");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn start_heap_trimmer() {}
