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
            let mut ticks = 0u32;
            loop {
                std::thread::sleep(HEAP_TRIM_INTERVAL);
                ticks = ticks.saturating_add(1);
                if ticks == CODE_RELEASE_TICK {
                    release_startup_code();
                }
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

/// At which tick of the heap trimmer the startup code is released: startup
/// (configuration, validation, opening the store) is over in memory mode
/// well before, and code released too early only faults back in.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
const CODE_RELEASE_TICK: u32 = 3;

/// Unmaps the resident pages of this executable's read-only mappings (code,
/// constants) once, after startup. Startup runs code and reads constants
/// that serving never needs again (configuration parsing and validation,
/// the CLI, the store's opening), and their pages stayed mapped: about
/// 1.5 MB of the resident set of a serving process (BENCHMARKS.md, "SSE
/// fan-out memory"). What serving uses faults back in from the page cache
/// (a minor fault, no disk read) on its next use.
///
/// Only mappings with no private (copied-on-write) page are released: for
/// those the file's pages are exactly what is mapped, so nothing is lost.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn release_startup_code() {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return;
    };
    let mut mapping: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(range) = exe_read_only_range(line, &exe) {
            mapping = range;
        } else if let Some(anonymous) = line.strip_prefix("Anonymous:")
            && let Some((start, end)) = mapping.take()
            && anonymous.trim() == "0 kB"
        {
            // SAFETY: the range is a whole mapping of this process's own
            // executable, read-only and without private pages: dropping its
            // page table entries loses nothing, the next access maps the
            // same file pages again.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// For a mapping's header line in `smaps`: `Some(Some(range))` when it maps
/// `exe` read-only, `Some(None)` for any other mapping, `None` for a line
/// that is not a mapping's header.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn exe_read_only_range(line: &str, exe: &std::path::Path) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let (Ok(start), Ok(end)) = (
        usize::from_str_radix(start, 16),
        usize::from_str_radix(end, 16),
    ) else {
        return None;
    };
    let perms = fields.next()?;
    let path = fields.nth(3).map(std::path::Path::new);
    let read_only = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-');
    Some((read_only && path == Some(exe)).then_some((start, end)))
}
