//! orc-rt's `orc_rt_WrapperFunctionBuffer`, field for field, and the
//! helpers C uses to make, read and dispose of one.
//!
//! The layout is orc-rt's: a union of `char *ValuePtr` and `char
//! Value[8]`, then `size_t Size`. Up to 8 bytes live inline; more live in
//! a `malloc`'d block; `Size == 0` with a non-NULL pointer is an
//! out-of-band error, a `malloc`'d NUL-terminated message. Conversions to
//! and from orcwire's [`WrapperFunctionBuffer`] go through the core
//! crate's own C round trip (`into_c` / `from_c`), so the two agree on
//! every shape.

use std::ffi::{c_char, CStr};

use orcwire::WrapperFunctionBuffer;

use crate::status::{c_bytes, guard, guard_value, put, Failure};

/// Bytes stored inline: `sizeof(char *)`.
pub const INLINE: usize = std::mem::size_of::<*mut c_char>();

/// orc-rt's `orc_rt_WrapperFunctionBufferDataUnion`.
#[allow(non_camel_case_types, non_snake_case)]
#[repr(C)]
#[derive(Clone, Copy)]
pub union orc_rt_WrapperFunctionBufferDataUnion {
    /// Heap bytes (`Size > 8`), or an error message (`Size == 0`).
    pub ValuePtr: *mut c_char,
    /// Inline bytes (`Size <= 8`).
    pub Value: [c_char; INLINE],
}

/// orc-rt's `orc_rt_WrapperFunctionBuffer`: 16 bytes on LP64.
#[allow(non_camel_case_types, non_snake_case)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct orc_rt_WrapperFunctionBuffer {
    /// The bytes, or the pointer to them.
    pub Data: orc_rt_WrapperFunctionBufferDataUnion,
    /// Number of bytes; 0 for an empty buffer or an out-of-band error.
    pub Size: usize,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<orc_rt_WrapperFunctionBuffer>() == 16);
    assert!(std::mem::align_of::<orc_rt_WrapperFunctionBuffer>() == 8);
    assert!(std::mem::offset_of!(orc_rt_WrapperFunctionBuffer, Data) == 0);
    assert!(std::mem::offset_of!(orc_rt_WrapperFunctionBuffer, Size) == 8);
    assert!(std::mem::size_of::<orc_rt_WrapperFunctionBufferDataUnion>() == 8);
};

impl orc_rt_WrapperFunctionBuffer {
    /// An empty buffer (`Size` 0, NULL pointer): owns nothing.
    pub const EMPTY: Self = Self {
        Data: orc_rt_WrapperFunctionBufferDataUnion {
            ValuePtr: std::ptr::null_mut(),
        },
        Size: 0,
    };

    /// Whether the pointer arm is the live one (heap bytes or an error).
    fn uses_pointer(&self) -> bool {
        self.Size == 0 || self.Size > INLINE
    }

    /// Hands `buffer` to C through the core crate's C round trip.
    pub fn from_rust(buffer: WrapperFunctionBuffer) -> Self {
        let c = buffer.into_c();
        // Copy the live arm only: the pointer arm keeps its provenance,
        // the inline arm its bytes.
        let data = if c.size == 0 || c.size > INLINE {
            // SAFETY: `into_c` writes the pointer arm for these sizes
            // (NULL, an error message, or heap bytes).
            let ptr = unsafe { c.data.value_ptr };
            orc_rt_WrapperFunctionBufferDataUnion { ValuePtr: ptr }
        } else {
            // SAFETY: `into_c` writes the inline arm for 1..=8 bytes.
            let value = unsafe { c.data.value };
            orc_rt_WrapperFunctionBufferDataUnion { Value: value }
        };
        Self {
            Data: data,
            Size: c.size,
        }
    }

    /// Takes the buffer back into Rust, freeing the C allocation.
    ///
    /// # Safety
    /// `self` follows orc-rt's rules (see the module docs) and is given
    /// up: neither it nor a copy is used or disposed of again.
    pub unsafe fn into_rust(self) -> WrapperFunctionBuffer {
        // The core crate's C type is not re-exported; start from an empty
        // one (which owns nothing) and write its public fields.
        let mut c = WrapperFunctionBuffer::new().into_c();
        c.size = self.Size;
        if self.uses_pointer() {
            // SAFETY: for these sizes the pointer arm is the live one.
            c.data.value_ptr = unsafe { self.Data.ValuePtr };
        } else {
            // SAFETY: for 1..=8 bytes the inline arm is the live one.
            c.data.value = unsafe { self.Data.Value };
        }
        // SAFETY: `c` is a field-for-field copy of `self`, which follows
        // orc-rt's rules and is given up by the caller's contract.
        unsafe { WrapperFunctionBuffer::from_c(c) }
    }

    /// The bytes, without taking ownership (empty for an error).
    ///
    /// # Safety
    /// `self` follows orc-rt's rules and outlives the slice.
    pub unsafe fn bytes(&self) -> &[u8] {
        if self.Size == 0 {
            return &[];
        }
        let ptr = if self.Size > INLINE {
            // SAFETY: Size > 8: the pointer arm holds `Size` bytes.
            unsafe { self.Data.ValuePtr.cast::<u8>().cast_const() }
        } else {
            // SAFETY: the inline arm is 8 plain bytes.
            unsafe { self.Data.Value.as_ptr().cast::<u8>() }
        };
        // SAFETY: `ptr` points to `Size` readable bytes, as above.
        unsafe { std::slice::from_raw_parts(ptr, self.Size) }
    }
}

/// Sets `*out` to an empty buffer (owns nothing; disposing of it is a
/// no-op).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_init(out: *mut orc_rt_WrapperFunctionBuffer) {
    if !out.is_null() {
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { put(out, orc_rt_WrapperFunctionBuffer::EMPTY) };
    }
}

/// Makes `*out` a buffer holding a copy of `len` bytes at `bytes`.
///
/// # Safety
/// `bytes` points to `len` readable bytes (or is NULL with `len` 0);
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_from_bytes(
    bytes: *const u8,
    len: usize,
    out: *mut orc_rt_WrapperFunctionBuffer,
) -> crate::orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: by the caller's contract.
        let src = unsafe { c_bytes(bytes, len, "bytes") }?;
        let b = orc_rt_WrapperFunctionBuffer::from_rust(WrapperFunctionBuffer::from_slice(src));
        // SAFETY: `out` checked non-null, writable by contract.
        unsafe { put(out, b) };
        Ok(())
    })
}

/// Makes `*out` a zero-filled buffer of `len` bytes, to be filled through
/// `orcwire_buffer_data`.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_allocate(
    len: usize,
    out: *mut orc_rt_WrapperFunctionBuffer,
) -> crate::orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let b = WrapperFunctionBuffer::try_zeroed(len)
            .map_err(|e| Failure::new(crate::orcwire_status::ORCWIRE_STATUS_IO, e.to_string()))?;
        // SAFETY: `out` checked non-null, writable by contract.
        unsafe { put(out, orc_rt_WrapperFunctionBuffer::from_rust(b)) };
        Ok(())
    })
}

/// Makes `*out` an out-of-band error carrying a copy of `message`
/// (`Size` 0, pointer to a `malloc`'d copy).
///
/// # Safety
/// `message` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_from_error(
    message: *const c_char,
    out: *mut orc_rt_WrapperFunctionBuffer,
) -> crate::orcwire_status {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        if message.is_null() {
            return Err(Failure::null("message"));
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
        let b = WrapperFunctionBuffer::out_of_band_error(text.into_owned());
        // SAFETY: `out` checked non-null, writable by contract.
        unsafe { put(out, orc_rt_WrapperFunctionBuffer::from_rust(b)) };
        Ok(())
    })
}

/// The first byte of `buffer`'s data: inside the struct for `Size <= 8`,
/// the heap block otherwise. NULL when `buffer` is NULL or holds an
/// out-of-band error.
///
/// # Safety
/// `buffer` is NULL or points to a valid buffer.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_data(
    buffer: *mut orc_rt_WrapperFunctionBuffer,
) -> *mut c_char {
    guard_value(std::ptr::null_mut(), || {
        // SAFETY: NULL or valid by contract.
        let Some(b) = (unsafe { buffer.as_mut() }) else {
            return std::ptr::null_mut();
        };
        if b.Size == 0 {
            // SAFETY: reading the pointer arm is defined for any bits.
            if unsafe { !b.Data.ValuePtr.is_null() } {
                return std::ptr::null_mut();
            }
        }
        if b.Size > INLINE {
            // SAFETY: Size > 8: the pointer arm is live.
            unsafe { b.Data.ValuePtr }
        } else {
            // SAFETY: taking the address of a union field reads nothing.
            unsafe { b.Data.Value.as_mut_ptr() }
        }
    })
}

/// `buffer->Size`, or 0 for NULL.
///
/// # Safety
/// `buffer` is NULL or points to a valid buffer.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_size(buffer: *const orc_rt_WrapperFunctionBuffer) -> usize {
    // SAFETY: NULL or valid by contract.
    unsafe { buffer.as_ref() }.map_or(0, |b| b.Size)
}

/// The out-of-band error message of `buffer`, owned by the buffer, or
/// NULL when `buffer` is NULL or not an error.
///
/// # Safety
/// `buffer` is NULL or points to a valid buffer.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_error(
    buffer: *const orc_rt_WrapperFunctionBuffer,
) -> *const c_char {
    // SAFETY: NULL or valid by contract.
    match unsafe { buffer.as_ref() } {
        // SAFETY: with Size 0 the pointer arm is live (NULL or a message).
        Some(b) if b.Size == 0 => unsafe { b.Data.ValuePtr.cast_const() },
        _ => std::ptr::null(),
    }
}

/// Frees what `buffer` owns (heap bytes or an error message) and resets
/// it to empty, so disposing of it twice is harmless. NULL is ignored.
///
/// # Safety
/// `buffer` is NULL or points to a valid buffer whose allocation, if
/// any, came from `malloc` and is owned by the caller.
#[no_mangle]
pub unsafe extern "C" fn orcwire_buffer_dispose(buffer: *mut orc_rt_WrapperFunctionBuffer) {
    // SAFETY: NULL or valid by contract.
    let Some(b) = (unsafe { buffer.as_mut() }) else {
        return;
    };
    if b.uses_pointer() {
        // SAFETY: for these sizes the pointer arm is live and, when
        // non-null, a malloc'd block the caller owns.
        unsafe { libc::free(b.Data.ValuePtr.cast()) };
    }
    *b = orc_rt_WrapperFunctionBuffer::EMPTY;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_shape_through_the_core_crate() {
        let shapes = [
            WrapperFunctionBuffer::new(),
            WrapperFunctionBuffer::from_slice(b"a"),
            WrapperFunctionBuffer::from_slice(b"12345678"),
            WrapperFunctionBuffer::from_slice(b"123456789"),
            WrapperFunctionBuffer::from_vec(vec![7; 5000]),
            WrapperFunctionBuffer::out_of_band_error("boom"),
        ];
        for b in shapes {
            let c = orc_rt_WrapperFunctionBuffer::from_rust(b.clone());
            assert_eq!(c.Size, b.len());
            // SAFETY: `c` came from `from_rust` and is given back once.
            assert_eq!(unsafe { c.bytes() }, b.as_slice());
            // SAFETY: as above.
            let back = unsafe { c.into_rust() };
            assert_eq!(back, b);
        }
    }

    #[test]
    fn core_crate_c_type_has_our_size() {
        let c = WrapperFunctionBuffer::new().into_c();
        assert_eq!(std::mem::size_of_val(&c), 16);
        assert_eq!(std::mem::align_of_val(&c), 8);
    }
}
