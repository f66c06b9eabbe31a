//! Stored bodies in buffers of their exact size.
//!
//! The process allocates with mimalloc, whose size classes are four to a doubling: a
//! 6.4 KB body lands in a 7 KB block, and across body sizes about a tenth of every
//! stored body is slack (measured: `bench/memory.sh`). A cache holds its bodies for days,
//! so they are allocated instead from the system allocator (glibc's malloc: 16-byte
//! granularity, large blocks mapped to the page), which nothing on the request path uses.
//!
//! Invariant: a body's buffer is written once, before it is shared, and freed by the
//! allocator that made it, when the last `Bytes` slice of it goes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use bytes::Bytes;

/// One exact-size buffer from the system allocator.
struct ExactBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain bytes, owned uniquely by this value and never written
// after `copy_of` returns; reading it from several threads at once is sound.
unsafe impl Send for ExactBuffer {}
unsafe impl Sync for ExactBuffer {}

impl ExactBuffer {
    fn layout(len: usize) -> Option<Layout> {
        Layout::array::<u8>(len).ok()
    }
}

impl AsRef<[u8]> for ExactBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ExactBuffer {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated by `System` with this very layout in `copy_of`.
            unsafe { System.dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// A copy of `data` in a buffer of exactly its size, to be kept in the store. Falls
/// back to an ordinary copy for an empty body or when the system allocator refuses.
pub fn copy_of(data: &[u8]) -> Bytes {
    let Some(layout) = ExactBuffer::layout(data.len()).filter(|l| l.size() > 0) else {
        return Bytes::copy_from_slice(data);
    };
    // SAFETY: `layout` has a non-zero size, as `alloc` requires.
    let Some(ptr) = NonNull::new(unsafe { System.alloc(layout) }) else {
        return Bytes::copy_from_slice(data);
    };
    // SAFETY: `ptr` is a fresh allocation of `data.len()` bytes, which cannot overlap
    // `data`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
    Bytes::from_owner(ExactBuffer {
        ptr,
        len: data.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_the_same_bytes_and_outlives_its_source() {
        let source: Vec<u8> = (0..6_400u32).map(|i| (i % 251) as u8).collect();
        let copy = copy_of(&source);
        drop(source);
        let slice = copy.slice(100..200);
        drop(copy);
        assert_eq!(slice.len(), 100);
        assert!(slice
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((i + 100) % 251) as u8));
        assert!(copy_of(&[]).is_empty());
    }
}
