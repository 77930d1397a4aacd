//! The global allocator, chosen per role before `main` runs: mimalloc for everything
//! multi-threaded (with glibc's malloc, frees of memory another thread allocated queue on
//! arena locks and leave the cores idle under load), the system allocator for `berth shim`,
//! one single-threaded process per container, where mimalloc's per-size-class pages would
//! add about half a MiB of private memory to every container.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// Set once, before the first allocation, and never changed: every block is freed by the
/// allocator that made it.
static USE_SYSTEM: AtomicBool = AtomicBool::new(false);

pub struct PerRole;

/// The allocator of this process's role.
fn chosen() -> &'static dyn GlobalAlloc {
    if USE_SYSTEM.load(Ordering::Relaxed) {
        &System
    } else {
        &MiMalloc
    }
}

// SAFETY: each call goes to one of two sound allocators, the same one for a block's whole
// life, because the choice is fixed before anything is allocated; the callers' contracts
// are passed on unchanged.
unsafe impl GlobalAlloc for PerRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { chosen().alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { chosen().alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see the impl; `ptr` came from the same allocator.
        unsafe { chosen().dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from the same allocator.
        unsafe { chosen().realloc(ptr, layout, new_size) }
    }
}

/// `mi_option_arena_eager_commit` (the fifth option of mimalloc's `mi_option_e`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs before `main` and before anything is allocated. glibc calls `.init_array` entries
/// with the program's arguments, which name the role.
extern "C" fn choose(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    // SAFETY: glibc passes the process's own argv, `argc` valid C strings.
    let verb = (argc > 1 && !argv.is_null()).then(|| unsafe { CStr::from_ptr(*argv.add(1)) });
    if verb == Some(c"shim") {
        USE_SYSTEM.store(true, Ordering::Relaxed);
        return;
    }
    // Arenas are committed as they are used, so that memory mimalloc purges is given back to
    // the OS (decommitted) rather than reset and still counted in the resident set. The
    // option is read when the first arena is made, so it is set before any allocation.
    // SAFETY: setting an option takes no pointers and is allowed at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array.00101")]
static CHOOSE: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = choose;
