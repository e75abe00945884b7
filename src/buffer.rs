//! [`WrapperFunctionBuffer`]: the bytes a wrapper function takes and
//! returns, or an out-of-band error.
//!
//! As in orc-rt, a wrapper function "takes a buffer of bytes as input and
//! returns a buffer of bytes as output"; the transport never interprets
//! them. A buffer may instead carry an *out-of-band error*: a message saying
//! the call itself failed (unknown handler tag, handler dropped, ...), which
//! is distinct from any byte result.
//!
//! Small payloads are stored inline, without a heap allocation: up to
//! [`INLINE_CAPACITY`] bytes (orc-rt stores 8). The value is 80 bytes, so
//! a typical small call — a few scalars, an address and a length, up to a
//! 64-byte record — crosses the connection with no allocation at all on
//! either side. The inline bytes start on an 8-byte boundary, after the
//! variant tag's word, and their length comes last: a buffer just filled
//! with a copy then moves as whole words, where bytes starting right after
//! the one-byte tag made each move's loads straddle the copy's stores and
//! stall (store forwarding; 35–50 ns a call for the transport's two
//! receives, `docs/BENCHMARKS.md`).
//!
//! [`CWrapperFunctionBuffer`] is the `#[repr(C)]` twin with exactly the
//! layout of orc-rt's `orc_rt_WrapperFunctionBuffer`, for the C ABI.

use std::ffi::{c_char, CStr};
use std::fmt;

/// Payloads of at most this many bytes are stored inline.
pub const INLINE_CAPACITY: usize = 71;

/// Inline bytes: 8-aligned (so they start after the tag's word) and the
/// length last, 72 bytes in all (the whole value stays 80).
#[derive(Clone)]
#[repr(C, align(8))]
struct InlineBytes {
    /// `len` bytes, then zeros.
    data: [u8; INLINE_CAPACITY],
    /// In `0..=INLINE_CAPACITY`.
    len: u8,
}

#[derive(Clone)]
enum Repr {
    /// `len` is in `0..=INLINE_CAPACITY`; bytes past `len` are zero.
    Inline(InlineBytes),
    /// Always longer than `INLINE_CAPACITY` bytes.
    Heap(Vec<u8>),
    /// An out-of-band error message.
    Error(Box<str>),
}

/// Owned bytes passed to or returned from a wrapper function, or an
/// out-of-band error.
///
/// ```
/// use orcwire::WrapperFunctionBuffer;
///
/// let small = WrapperFunctionBuffer::from_slice(b"hi");
/// assert_eq!(small.as_slice(), b"hi");
/// assert!(!small.is_error());
///
/// let big = WrapperFunctionBuffer::from(vec![7u8; 1000]); // no copy
/// assert_eq!(big.len(), 1000);
///
/// let err = WrapperFunctionBuffer::out_of_band_error("no such handler");
/// assert_eq!(err.error_message(), Some("no such handler"));
/// assert!(err.as_slice().is_empty());
/// ```
#[derive(Clone)]
pub struct WrapperFunctionBuffer {
    repr: Repr,
}

impl WrapperFunctionBuffer {
    /// An empty buffer.
    #[inline]
    pub const fn new() -> Self {
        Self {
            repr: Repr::Inline(InlineBytes {
                len: 0,
                data: [0; INLINE_CAPACITY],
            }),
        }
    }

    /// Copies `bytes` into a new buffer (inline when small).
    #[inline]
    pub fn from_slice(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE_CAPACITY {
            // Built where it is returned: filling a local array and moving
            // it out made the move's loads straddle the copy's stores, a
            // store-forwarding stall on every small result (`docs/BENCHMARKS.md`,
            // "2026-11-30 (10)").
            let mut buffer = Self::new();
            if let Repr::Inline(inline) = &mut buffer.repr {
                inline.data[..bytes.len()].copy_from_slice(bytes);
                inline.len = bytes.len() as u8;
            }
            buffer
        } else {
            Self {
                repr: Repr::Heap(bytes.to_vec()),
            }
        }
    }

    /// Takes ownership of `bytes`. Large vectors are kept as they are (no
    /// copy); small ones move inline and free their allocation.
    #[inline]
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.len() <= INLINE_CAPACITY {
            Self::from_slice(&bytes)
        } else {
            Self {
                repr: Repr::Heap(bytes),
            }
        }
    }

    /// A zero-filled buffer of `len` bytes, allocated fallibly: for sizes
    /// that come from the peer, so that a hostile length is an error rather
    /// than an abort.
    ///
    /// # Errors
    /// [`AllocError`] when the allocator cannot provide `len` bytes.
    pub fn try_zeroed(len: usize) -> Result<Self, AllocError> {
        if len <= INLINE_CAPACITY {
            return Ok(Self {
                repr: Repr::Inline(InlineBytes {
                    len: len as u8,
                    data: [0; INLINE_CAPACITY],
                }),
            });
        }
        // Zeroed straight from the allocator (calloc-like): large buffers
        // get lazily zeroed pages, so a peer that announces a huge message
        // and trickles it in commits only the memory it actually sends.
        let layout = std::alloc::Layout::array::<u8>(len).map_err(|_| AllocError { len })?;
        // SAFETY: `len > INLINE_CAPACITY > 0`, so the layout is not
        // zero-sized.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(AllocError { len });
        }
        // SAFETY: `ptr` was just allocated by the global allocator with the
        // layout of `[u8; len]`, all `len` bytes are initialised (zero),
        // and ownership moves into the vector.
        let v = unsafe { Vec::from_raw_parts(ptr, len, len) };
        Ok(Self {
            repr: Repr::Heap(v),
        })
    }

    /// Makes this buffer hold `len` bytes of plain data, reusing its
    /// storage where it can (the inline bytes, or a heap buffer whose
    /// capacity suffices), and returns them to be overwritten. For a
    /// receiver that fills one buffer per message in place rather than
    /// building a new one and moving it (each move of a buffer just filled
    /// reloads bytes still in the store buffer; see the module docs).
    ///
    /// The returned bytes hold whatever was there before (zero, or earlier
    /// data): the caller overwrites all of them. An out-of-band error the
    /// buffer held is dropped.
    ///
    /// # Errors
    /// [`AllocError`] when a larger heap buffer cannot be allocated; the
    /// buffer is then empty.
    ///
    /// ```
    /// use orcwire::WrapperFunctionBuffer;
    ///
    /// let mut b = WrapperFunctionBuffer::from_slice(b"earlier");
    /// b.refill(3).unwrap().copy_from_slice(b"new");
    /// assert_eq!(b.as_slice(), b"new");
    /// ```
    #[inline]
    pub fn refill(&mut self, len: usize) -> Result<&mut [u8], AllocError> {
        // The usual case, inlined at the caller's: an inline buffer refilled
        // with a small payload (every receive of one).
        if len > INLINE_CAPACITY || !matches!(self.repr, Repr::Inline(_)) {
            return self.refill_other(len);
        }
        let Repr::Inline(inline) = &mut self.repr else {
            unreachable!("checked above")
        };
        let old = usize::from(inline.len);
        if old > len {
            // Bytes past `len` stay zero.
            inline.data[len..old].fill(0);
        }
        inline.len = len as u8;
        Ok(&mut inline.data[..len])
    }

    /// [`refill`](Self::refill) for a buffer that changes representation
    /// or is (or becomes) a heap buffer.
    #[inline(never)]
    fn refill_other(&mut self, len: usize) -> Result<&mut [u8], AllocError> {
        if len <= INLINE_CAPACITY {
            *self = Self::new();
            let Repr::Inline(inline) = &mut self.repr else {
                unreachable!("the buffer was just made inline")
            };
            inline.len = len as u8;
            return Ok(&mut inline.data[..len]);
        }
        let reusable = matches!(&self.repr, Repr::Heap(v) if v.capacity() >= len);
        if reusable {
            if let Repr::Heap(v) = &mut self.repr {
                v.resize(len, 0);
            }
        } else {
            // Free the old storage first: empty, should the allocation fail.
            *self = Self::new();
            *self = Self::try_zeroed(len)?;
        }
        Ok(self.as_mut_slice())
    }

    /// A buffer that carries an out-of-band error instead of bytes.
    pub fn out_of_band_error(message: impl Into<String>) -> Self {
        Self {
            repr: Repr::Error(message.into().into_boxed_str()),
        }
    }

    /// The bytes (empty for an out-of-band error).
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match &self.repr {
            Repr::Inline(InlineBytes { len, data }) => &data[..usize::from(*len)],
            Repr::Heap(v) => v,
            Repr::Error(_) => &[],
        }
    }

    /// The bytes, mutably (empty for an out-of-band error).
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.repr {
            Repr::Inline(InlineBytes { len, data }) => &mut data[..usize::from(*len)],
            Repr::Heap(v) => v,
            Repr::Error(_) => &mut [],
        }
    }

    /// Number of bytes (0 for an out-of-band error).
    #[inline]
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no bytes (true for an out-of-band error too).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this buffer carries an out-of-band error.
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(self.repr, Repr::Error(_))
    }

    /// Whether the bytes are stored inline (no heap allocation).
    #[inline]
    pub fn is_inline(&self) -> bool {
        matches!(self.repr, Repr::Inline(_))
    }

    /// The out-of-band error message, if this buffer carries one.
    #[inline]
    pub fn error_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Error(m) => Some(m),
            _ => None,
        }
    }

    /// The bytes as a vector; no copy when they are on the heap. An
    /// out-of-band error gives an empty vector: check
    /// [`into_result`](Self::into_result) first when that matters.
    pub fn into_vec(self) -> Vec<u8> {
        match self.repr {
            Repr::Heap(v) => v,
            Repr::Inline(InlineBytes { len, data }) => data[..usize::from(len)].to_vec(),
            Repr::Error(_) => Vec::new(),
        }
    }

    /// `Ok(bytes)`, or `Err(message)` for an out-of-band error.
    ///
    /// # Errors
    /// The out-of-band error message, when there is one.
    pub fn into_result(self) -> Result<Vec<u8>, String> {
        match self.repr {
            Repr::Error(m) => Err(m.into_string()),
            _ => Ok(self.into_vec()),
        }
    }

    /// Hands the buffer to C, in orc-rt's layout. The C side owns it and
    /// frees it with `free` (orc-rt's `orc_rt_DisposeWrapperFunctionBuffer`),
    /// or gives it back with [`from_c`](Self::from_c).
    ///
    /// An error message containing a NUL byte is cut at that byte.
    ///
    /// # Panics
    /// Aborts (as any allocation failure does) if `malloc` fails.
    pub fn into_c(self) -> CWrapperFunctionBuffer {
        match self.repr {
            Repr::Error(m) => {
                let text = m.as_bytes();
                let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
                let ptr = c_alloc(text.len() + 1);
                // SAFETY: `ptr` is a fresh allocation of `text.len() + 1`
                // bytes that nothing else aliases.
                unsafe {
                    std::ptr::copy_nonoverlapping(text.as_ptr(), ptr, text.len());
                    *ptr.add(text.len()) = 0;
                }
                CWrapperFunctionBuffer {
                    data: CWrapperFunctionBufferData {
                        value_ptr: ptr.cast(),
                    },
                    size: 0,
                }
            }
            _ => {
                let bytes = self.as_slice();
                if bytes.len() <= C_INLINE {
                    let mut value = [0 as c_char; C_INLINE];
                    for (d, s) in value.iter_mut().zip(bytes) {
                        *d = *s as c_char;
                    }
                    CWrapperFunctionBuffer {
                        data: CWrapperFunctionBufferData { value },
                        size: bytes.len(),
                    }
                } else {
                    let ptr = c_alloc(bytes.len());
                    // SAFETY: `ptr` is a fresh allocation of `bytes.len()`
                    // bytes; `bytes` is a distinct live slice.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
                    CWrapperFunctionBuffer {
                        data: CWrapperFunctionBufferData {
                            value_ptr: ptr.cast(),
                        },
                        size: bytes.len(),
                    }
                }
            }
        }
    }

    /// Takes ownership of a buffer that C filled in orc-rt's layout, copying
    /// its bytes into Rust and freeing the C allocation.
    ///
    /// # Safety
    /// `c` must follow orc-rt's rules: if `size > 8`, `value_ptr` points to
    /// `size` readable bytes allocated with `malloc`; if `size == 0` and
    /// `value_ptr` is non-null, it points to a `malloc`'d NUL-terminated
    /// string; otherwise the bytes are in `value`. The caller gives up `c`
    /// (it must not be freed or used again).
    pub unsafe fn from_c(c: CWrapperFunctionBuffer) -> Self {
        let size = c.size;
        if size == 0 {
            // SAFETY: reading the pointer arm of the union is always
            // defined: every bit pattern is a valid pointer value.
            let ptr = unsafe { c.data.value_ptr };
            if ptr.is_null() {
                return Self::new();
            }
            // SAFETY: by the caller's contract a non-null pointer with size
            // 0 is a malloc'd NUL-terminated string that we now own.
            let msg = unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: allocated with malloc, owned by us, not used again.
            unsafe { libc::free(ptr.cast()) };
            return Self::out_of_band_error(msg);
        }
        if size <= C_INLINE {
            // SAFETY: with 0 < size <= 8 the inline arm holds the bytes;
            // reading `c_char`s is defined for any bit pattern.
            let value = unsafe { c.data.value };
            let bytes: Vec<u8> = value[..size].iter().map(|&b| b as u8).collect();
            return Self::from_slice(&bytes);
        }
        // SAFETY: size > 8, so by contract the pointer arm is a malloc'd
        // buffer of `size` readable bytes that we now own.
        let ptr = unsafe { c.data.value_ptr };
        // SAFETY: see above; the slice is dropped before the free below.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) }.to_vec();
        // SAFETY: allocated with malloc, owned by us, not used again.
        unsafe { libc::free(ptr.cast()) };
        Self::from_vec(bytes)
    }
}

/// Bytes orc-rt stores inline: `sizeof(char *)`.
const C_INLINE: usize = std::mem::size_of::<*mut c_char>();

fn c_alloc(len: usize) -> *mut u8 {
    // SAFETY: malloc with a non-zero size (we never call this with 0:
    // errors allocate len + 1, data only when len > 8).
    let ptr = unsafe { libc::malloc(len.max(1)) }.cast::<u8>();
    if ptr.is_null() {
        std::alloc::handle_alloc_error(
            std::alloc::Layout::array::<u8>(len.max(1)).unwrap_or(std::alloc::Layout::new::<u8>()),
        );
    }
    ptr
}

/// The data word of [`CWrapperFunctionBuffer`]: orc-rt's
/// `orc_rt_WrapperFunctionBufferDataUnion`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CWrapperFunctionBufferData {
    /// Heap bytes (size > 8), or an error string (size == 0).
    pub value_ptr: *mut c_char,
    /// Inline bytes (size <= 8).
    pub value: [c_char; C_INLINE],
}

/// orc-rt's `orc_rt_WrapperFunctionBuffer`, field for field: a union of
/// `char *` and `char[8]`, then a `size_t`; 16 bytes on LP64.
///
/// An out-of-band error is `size == 0` with a non-null `value_ptr` to a
/// malloc'd NUL-terminated message; an empty buffer is `size == 0` with a
/// null pointer.
///
/// ```
/// use orcwire::WrapperFunctionBuffer;
///
/// let c = WrapperFunctionBuffer::from_slice(b"0123456789").into_c();
/// assert_eq!(c.size, 10);
/// // SAFETY: `c` came from `into_c` and is given back exactly once.
/// let back = unsafe { WrapperFunctionBuffer::from_c(c) };
/// assert_eq!(back.as_slice(), b"0123456789");
/// ```
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CWrapperFunctionBuffer {
    /// The bytes or the pointer to them.
    pub data: CWrapperFunctionBufferData,
    /// The number of bytes; 0 for empty or out-of-band error.
    pub size: usize,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<CWrapperFunctionBuffer>() == 16);
    assert!(std::mem::align_of::<CWrapperFunctionBuffer>() == 8);
    assert!(std::mem::offset_of!(CWrapperFunctionBuffer, size) == 8);
};
const _: () = assert!(std::mem::size_of::<WrapperFunctionBuffer>() == 80);

/// The allocator could not provide the bytes asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("could not allocate {len} bytes for a message buffer; lower the message size limit or free memory")]
pub struct AllocError {
    /// Bytes asked for.
    pub len: usize,
}

impl Default for WrapperFunctionBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for WrapperFunctionBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.error_message() == other.error_message() && self.as_slice() == other.as_slice()
    }
}

impl Eq for WrapperFunctionBuffer {}

impl fmt::Debug for WrapperFunctionBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Error(m) => f.debug_tuple("OutOfBandError").field(m).finish(),
            _ => {
                let b = self.as_slice();
                write!(f, "WrapperFunctionBuffer({} bytes", b.len())?;
                if !b.is_empty() {
                    write!(f, ": {:02x?}", &b[..b.len().min(16)])?;
                    if b.len() > 16 {
                        f.write_str("..")?;
                    }
                }
                f.write_str(")")
            }
        }
    }
}

impl From<Vec<u8>> for WrapperFunctionBuffer {
    fn from(v: Vec<u8>) -> Self {
        Self::from_vec(v)
    }
}

impl From<&[u8]> for WrapperFunctionBuffer {
    fn from(s: &[u8]) -> Self {
        Self::from_slice(s)
    }
}

impl<const N: usize> From<&[u8; N]> for WrapperFunctionBuffer {
    fn from(s: &[u8; N]) -> Self {
        Self::from_slice(s)
    }
}

impl AsRef<[u8]> for WrapperFunctionBuffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_reuses_storage_and_keeps_bytes_past_len_zero() {
        let mut b = WrapperFunctionBuffer::from_slice(b"abcdef");
        b.refill(2).unwrap().copy_from_slice(b"xy");
        assert_eq!(b.as_slice(), b"xy");
        // Growing again shows what lies past the length: zeros, not "cdef".
        assert_eq!(b.refill(6).unwrap(), b"xy\0\0\0\0");
        // A heap buffer with room is reused, not reallocated.
        let mut b = WrapperFunctionBuffer::from_vec(vec![7u8; 500]);
        let before = b.as_slice().as_ptr();
        let bytes = b.refill(300).unwrap();
        assert_eq!(bytes.len(), 300);
        assert_eq!(bytes.as_ptr(), before);
        assert!(!b.is_inline());
        // Small again: inline. Larger than any storage: a new allocation.
        b.refill(INLINE_CAPACITY).unwrap().fill(1);
        assert!(b.is_inline());
        assert_eq!(b.as_slice(), &[1u8; INLINE_CAPACITY][..]);
        assert_eq!(b.refill(1000).unwrap().len(), 1000);
        assert!(!b.is_inline());
        // An out-of-band error becomes plain bytes.
        let mut b = WrapperFunctionBuffer::out_of_band_error("boom");
        b.refill(3).unwrap().copy_from_slice(b"abc");
        assert!(!b.is_error());
        assert_eq!(b.as_slice(), b"abc");
        // Too large for the allocator: an error, and an empty buffer.
        let mut b = WrapperFunctionBuffer::from_slice(b"x");
        assert_eq!(b.refill(usize::MAX).unwrap_err(), AllocError { len: usize::MAX });
        assert!(b.is_empty());
    }

    #[test]
    fn inline_boundary_and_heap() {
        for n in [0, 1, 7, 8, 9, INLINE_CAPACITY, INLINE_CAPACITY + 1, 4096] {
            let bytes: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let b = WrapperFunctionBuffer::from_slice(&bytes);
            assert_eq!(b.as_slice(), &bytes[..]);
            assert_eq!(b.is_inline(), n <= INLINE_CAPACITY);
            let v = WrapperFunctionBuffer::from_vec(bytes.clone());
            assert_eq!(v, b);
            assert_eq!(v.into_vec(), bytes);
        }
    }

    #[test]
    fn from_vec_keeps_large_allocation() {
        let v = vec![1u8; 100];
        let ptr = v.as_ptr();
        let b = WrapperFunctionBuffer::from_vec(v);
        assert_eq!(b.as_slice().as_ptr(), ptr);
        let back = b.into_vec();
        assert_eq!(back.as_ptr(), ptr);
    }

    #[test]
    fn c_round_trip_all_shapes() {
        for n in [0usize, 1, 7, 8, 9, 100] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 3) as u8).collect();
            let c = WrapperFunctionBuffer::from_slice(&bytes).into_c();
            assert_eq!(c.size, n);
            if n == 0 {
                // SAFETY: reading the pointer arm is defined for any bits.
                assert!(unsafe { c.data.value_ptr }.is_null());
            }
            // SAFETY: produced by into_c, given back once.
            let back = unsafe { WrapperFunctionBuffer::from_c(c) };
            assert_eq!(back.as_slice(), &bytes[..]);
            assert!(!back.is_error());
        }
        let c = WrapperFunctionBuffer::out_of_band_error("bad\0tail").into_c();
        assert_eq!(c.size, 0);
        // SAFETY: produced by into_c; error arm is a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(c.data.value_ptr) };
        assert_eq!(s.to_bytes(), b"bad");
        // SAFETY: produced by into_c, given back once.
        let back = unsafe { WrapperFunctionBuffer::from_c(c) };
        assert_eq!(back.error_message(), Some("bad"));
    }

    #[test]
    fn try_zeroed_refuses_absurd_sizes() {
        assert!(WrapperFunctionBuffer::try_zeroed(usize::MAX / 2).is_err());
        let b = WrapperFunctionBuffer::try_zeroed(100).unwrap();
        assert_eq!(b.as_slice(), &[0u8; 100][..]);
    }
}
