//! orcwire's C ABI (`include/orcwire.h`): orc-rt's wrapper-function
//! buffer, status codes with a thread-local error message, the message
//! level over shared memory (what an LLVM `SimpleRemoteEPCTransport`
//! needs), and the endpoint level shaped like orc-rt's
//! `ControllerAccess`.
//!
//! Built as a static library, a shared library and an rlib (for its own
//! tests). Every entry point runs inside [`status::guard`], so a Rust
//! panic becomes `ORCWIRE_STATUS_PANIC` instead of unwinding into C.
//! Handles are opaque pointers to boxed Rust objects; the header says,
//! for every function, who owns what and which threads may call it.
//!
//! Unlike the library crates, this crate uses std's locks and threads
//! directly rather than the `orcwire-sync` shim: it is a thin boundary
//! that is not model-checked with loom.
//!
//! The modules: [`status`] (codes, last error, the panic guard),
//! [`buffer`] (`orc_rt_WrapperFunctionBuffer`), [`transport`] (the
//! message level), [`launch`] (spawning, listening, attaching),
//! [`endpoint`] (builders, calls, responders) and [`completion`] (the
//! thread that runs asynchronous calls' callbacks).
#![deny(missing_docs)]
#![allow(non_camel_case_types)]

pub mod buffer;
pub mod completion;
pub mod endpoint;
pub mod launch;
pub mod status;
pub mod transport;

pub use buffer::orc_rt_WrapperFunctionBuffer;
pub use status::orcwire_status;

/// The version of the ABI described by `include/orcwire.h`; bumped on any
/// incompatible change. The header defines `ORCWIRE_ABI_VERSION` to the
/// same number.
pub const ORCWIRE_ABI_VERSION: u32 = 1;

/// Checks that the caller was compiled with a header matching this
/// library: `abi_version` must be `ORCWIRE_ABI_VERSION`, `buffer_size`
/// `sizeof(orc_rt_WrapperFunctionBuffer)` and `message_size`
/// `sizeof(orcwire_message)`. `ORCWIRE_STATUS_ABI_MISMATCH` otherwise.
/// The header's `ORCWIRE_CHECK_ABI()` passes all three.
#[no_mangle]
pub extern "C" fn orcwire_check_abi(
    abi_version: u32,
    buffer_size: usize,
    message_size: usize,
) -> orcwire_status {
    status::guard(|| {
        let ours = (
            ORCWIRE_ABI_VERSION,
            std::mem::size_of::<orc_rt_WrapperFunctionBuffer>(),
            std::mem::size_of::<transport::orcwire_message>(),
        );
        if (abi_version, buffer_size, message_size) != ours {
            return Err(status::Failure::new(
                orcwire_status::ORCWIRE_STATUS_ABI_MISMATCH,
                format!(
                    "the caller was built with ABI {abi_version} (buffer {buffer_size} bytes, message {message_size} bytes) but this library is ABI {} ({} and {} bytes); rebuild against this library's orcwire.h",
                    ours.0, ours.1, ours.2
                ),
            ));
        }
        Ok(())
    })
}
