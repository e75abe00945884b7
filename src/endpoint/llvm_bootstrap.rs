//! The bootstrap symbols an LLVM 14 controller requires of an executor.
//!
//! `SimpleRemoteEPC::Create` looks these up before it returns (the JIT
//! dispatch context and function, `run_as_main`, the default memory
//! manager and memory access), and LLVM's dylib manager and EH-frame
//! registration look up the rest on first use. An orcwire executor
//! speaking LLVM's dialect publishes every one the application did not
//! register itself, so that an unmodified LLVM controller connects and
//! calls the application's functions. **None of them is implemented
//! yet:** the wrappers answer with an error (an LLVM caller sees a failed
//! result), and the data objects are tags no handler answers. Running
//! LLVM's JIT inside an orcwire executor (issue #12) registers real ones
//! under these names.

use std::sync::Arc;

use crate::buffer::WrapperFunctionBuffer;
use crate::handler::HandlerFn;

pub(super) enum Kind {
    /// An address LLVM keeps (never calls as a wrapper).
    Data,
    /// A wrapper function of the named service.
    Wrapper(&'static str),
}

/// LLVM 14's set, and what LLVM 19 added or renamed.
pub(super) const SYMBOLS: [(&str, Kind); 26] = [
    ("__llvm_orc_SimpleRemoteEPC_dispatch_ctx", Kind::Data),
    ("__llvm_orc_SimpleRemoteEPC_dispatch_fn", Kind::Data),
    (
        "__llvm_orc_bootstrap_run_as_main_wrapper",
        Kind::Wrapper("run_as_main"),
    ),
    (
        "__llvm_orc_SimpleExecutorMemoryManager_Instance",
        Kind::Data,
    ),
    (
        "__llvm_orc_SimpleExecutorMemoryManager_reserve_wrapper",
        Kind::Wrapper("the memory manager"),
    ),
    (
        "__llvm_orc_SimpleExecutorMemoryManager_finalize_wrapper",
        Kind::Wrapper("the memory manager"),
    ),
    (
        "__llvm_orc_SimpleExecutorMemoryManager_deallocate_wrapper",
        Kind::Wrapper("the memory manager"),
    ),
    (
        "__llvm_orc_bootstrap_mem_write_uint8s_wrapper",
        Kind::Wrapper("memory access"),
    ),
    (
        "__llvm_orc_bootstrap_mem_write_uint16s_wrapper",
        Kind::Wrapper("memory access"),
    ),
    (
        "__llvm_orc_bootstrap_mem_write_uint32s_wrapper",
        Kind::Wrapper("memory access"),
    ),
    (
        "__llvm_orc_bootstrap_mem_write_uint64s_wrapper",
        Kind::Wrapper("memory access"),
    ),
    (
        "__llvm_orc_bootstrap_mem_write_buffers_wrapper",
        Kind::Wrapper("memory access"),
    ),
    (
        "__llvm_orc_bootstrap_register_ehframe_section_wrapper",
        Kind::Wrapper("EH-frame registration"),
    ),
    (
        "__llvm_orc_bootstrap_deregister_ehframe_section_wrapper",
        Kind::Wrapper("EH-frame registration"),
    ),
    ("__llvm_orc_SimpleExecutorDylibManager_Instance", Kind::Data),
    (
        "__llvm_orc_SimpleExecutorDylibManager_open_wrapper",
        Kind::Wrapper("the dylib manager"),
    ),
    (
        "__llvm_orc_SimpleExecutorDylibManager_lookup_wrapper",
        Kind::Wrapper("the dylib manager"),
    ),
    (
        "__llvm_orc_bootstrap_run_as_void_function_wrapper",
        Kind::Wrapper("run_as_void_function"),
    ),
    (
        "__llvm_orc_bootstrap_run_as_int_function_wrapper",
        Kind::Wrapper("run_as_int_function"),
    ),
    (
        "llvm_orc_registerEHFrameSectionWrapper",
        Kind::Wrapper("EH-frame registration"),
    ),
    (
        "llvm_orc_deregisterEHFrameSectionWrapper",
        Kind::Wrapper("EH-frame registration"),
    ),
    (
        "__llvm_orc_ExecutorSharedMemoryMapperService_Instance",
        Kind::Data,
    ),
    (
        "__llvm_orc_ExecutorSharedMemoryMapperService_Reserve",
        Kind::Wrapper("the shared-memory mapper"),
    ),
    (
        "__llvm_orc_ExecutorSharedMemoryMapperService_Initialize",
        Kind::Wrapper("the shared-memory mapper"),
    ),
    (
        "__llvm_orc_ExecutorSharedMemoryMapperService_Deinitialize",
        Kind::Wrapper("the shared-memory mapper"),
    ),
    (
        "__llvm_orc_ExecutorSharedMemoryMapperService_Release",
        Kind::Wrapper("the shared-memory mapper"),
    ),
];

/// A wrapper that answers every call with an error naming `service`.
pub(super) fn unimplemented(service: &'static str) -> Arc<HandlerFn> {
    Arc::new(move |_args, responder| {
        responder.respond(WrapperFunctionBuffer::out_of_band_error(format!(
            "this orcwire executor does not implement {service} (LLVM's JIT in an orcwire executor is issue #12)"
        )))
    })
}
