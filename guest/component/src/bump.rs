//! The component's allocator: a bump allocator.
//!
//! The host instantiates the component in a fresh store for every
//! translation and drops the store, memory and all, when the call returns. So
//! nothing the guest allocates outlives one call, and freeing inside the call
//! buys little: the snapshot is lowered into the guest string by string, the
//! translation builds its tables and the output, and the output is lifted
//! back out. A bump allocator makes each allocation a pointer increment and
//! each free a no-op (except that freeing or growing the most recent block
//! happens in place, which covers vectors growing while they are filled).
//!
//! The price is that memory grows with everything allocated during the call,
//! not with what is live at the peak. That stays bounded by the store's
//! memory limit, which the host enforces and reports like any other
//! exhaustion; `infergate-bench translate` prints the peak.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;

const PAGE: usize = 64 * 1024;
/// Memory is grown at least this much at a time.
const MIN_GROWTH: usize = 1 << 20;

pub struct Bump {
    /// Next free byte; 0 until the first allocation.
    next: Cell<usize>,
    /// End of the memory the allocator may use (the memory's current size).
    end: Cell<usize>,
    /// Start of the most recent allocation, for in-place free and growth.
    last: Cell<usize>,
}

// SAFETY: the component runs on one thread (wasm32-unknown-unknown without
// the atomics feature has no threads), so the cells are never shared.
unsafe impl Sync for Bump {}

impl Bump {
    pub const fn new() -> Self {
        Bump {
            next: Cell::new(0),
            end: Cell::new(0),
            last: Cell::new(0),
        }
    }

    /// Make sure `[next, next + size)` is inside the memory, growing it if
    /// needed. False if the memory cannot grow (the host's limit traps first).
    fn reserve(&self, upto: usize) -> bool {
        if upto <= self.end.get() {
            return true;
        }
        let needed = (upto - self.end.get()).max(MIN_GROWTH);
        let pages = needed.div_ceil(PAGE);
        if wasm32::memory_grow(0, pages) == usize::MAX {
            return false;
        }
        self.end.set(wasm32::memory_size(0) * PAGE);
        true
    }
}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.next.get() == 0 {
            // Everything past the memory's initial size (data, stack and
            // the linker's heap base are below it) is ours.
            let end = wasm32::memory_size(0) * PAGE;
            self.next.set(end);
            self.end.set(end);
        }
        let start = match self.next.get().checked_next_multiple_of(layout.align()) {
            Some(start) => start,
            None => return core::ptr::null_mut(),
        };
        let Some(upto) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        if !self.reserve(upto) {
            return core::ptr::null_mut();
        }
        self.next.set(upto);
        self.last.set(start);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the most recent block can be given back.
        if ptr as usize == self.last.get() && ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = ptr as usize;
        if start == self.last.get() && start + layout.size() == self.next.get() {
            // The most recent block grows or shrinks where it is.
            let Some(upto) = start.checked_add(new_size) else {
                return core::ptr::null_mut();
            };
            if !self.reserve(upto) {
                return core::ptr::null_mut();
            }
            self.next.set(upto);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller guarantees `layout.align()` with `new_size` is
        // a valid layout (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size, as `new_size > layout.size()`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for `layout.size()` bytes and
            // distinct (the new one lies past every earlier allocation).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}
