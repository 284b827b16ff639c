//! A truncated SQLite shared-memory file is a state-store fault, not a crash.
//!
//! In WAL mode SQLite maps `state.sqlite-shm` into memory, so that every process using the
//! database (replicas on one host, `llmgw keys`) shares the WAL index. When that file is
//! truncated while it is mapped (by hand, by a clean-up job), the next access to a page past its
//! new end raises SIGBUS, whose default action kills the process.
//!
//! [`guarded`] runs a SQLite call with a SIGBUS handler armed for the calling thread. A fault of
//! that kind (`BUS_ADRERR`: a mapped page with no file behind it) gets a zeroed private page in
//! place of the missing one and is counted; SQLite then finds an uninitialised index and
//! rebuilds it from the WAL file, which holds the data. The caller sees the fault, fails the
//! operation and reopens its connection, so that nothing runs on the private index afterwards.
//! A SIGBUS on any other thread, or of any other kind, goes to the disposition that was in
//! place before (Rust's own handler, or the default: the process stops as it would have).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

thread_local! {
    /// Whether this thread is inside [`guarded`].
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Faults handled on this thread.
    static FAULTS: Cell<u64> = const { Cell::new(0) };
}

/// The SIGBUS disposition before ours, restored for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The size of a memory page, read once before the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(0);

static INSTALL: Once = Once::new();

/// Runs `f`, turning a SIGBUS from a truncated shared-memory mapping into a zeroed page;
/// returns what `f` returned and whether such a fault happened during it.
pub fn guarded<T>(f: impl FnOnce() -> T) -> (T, bool) {
    install();
    let before = FAULTS.with(Cell::get);
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, FAULTS.with(Cell::get) != before)
}

/// Installs the handler once per process.
fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `sysconf` and `sigaction` are called with valid arguments; the zeroed
        // `sigaction` values are valid (no handler, empty mask, no flags) before being filled.
        unsafe {
            PAGE.store(
                libc::sysconf(libc::_SC_PAGESIZE) as usize,
                Ordering::Relaxed,
            );
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut ours.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &ours, &mut previous) == 0 {
                let _ = PREVIOUS.set(previous);
            }
        }
    });
}

/// The SIGBUS handler. It only reads thread-locals without destructors, calls `mmap` and
/// `sigaction` (plain system calls) and returns.
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if ARMED.with(Cell::get) && code == libc::BUS_ADRERR {
        let page = PAGE.load(Ordering::Relaxed);
        let start = addr & !(page - 1);
        // SAFETY: the page lies in a shared mapping SQLite made of its `-shm` file, which has
        // no file behind it any more; a private zeroed page takes its place at the same address
        // and is unmapped with the rest of the mapping when SQLite closes it.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            FAULTS.with(|f| f.set(f.get() + 1));
            return;
        }
    }
    // Not ours: the previous disposition gets the fault when the instruction runs again.
    // SAFETY: restoring a disposition returned by `sigaction`, or the default one.
    unsafe {
        match PREVIOUS.get() {
            Some(previous) => libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()),
            None => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                0
            }
        };
    }
}
