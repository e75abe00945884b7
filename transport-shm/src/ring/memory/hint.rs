//! Cache hints for the ring (see "Cache hints" in the [ring
//! docs](super::super)): fetch a line for writing, fetch it for reading,
//! demote it to the shared cache. Each is one instruction that makes no
//! access, cannot fault and leaves registers and flags alone, so any
//! address will do; on other architectures, and under loom, they do
//! nothing.

/// Cache line size of the CPUs this runs on.
#[cfg(not(orcwire_loom))]
const LINE: usize = 64;

/// A hint on the line holding one address.
pub(crate) type LineHint = fn(*const u8);

/// Applies `hint` to every line of `start .. start + len` (for the
/// mapped backing; loom's cells take no hints).
#[cfg(not(orcwire_loom))]
#[inline]
pub(crate) fn each_line(start: *const u8, len: usize, hint: LineHint) {
    let mut at = 0;
    while at < len {
        hint(start.wrapping_add(at));
        at += LINE;
    }
}

/// `prefetchw`: fetch the line exclusive, so stores to it hit. (The
/// intrinsic emits a read prefetch unless the whole build targets
/// `prfchw`; CPUs from before the instruction decode it as a no-op.)
#[inline]
pub(crate) fn for_write(at: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(orcwire_loom)))]
    // SAFETY: a prefetch hint: no access, no fault, no register or flag
    // changed.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) at, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(all(target_arch = "x86_64", not(orcwire_loom))))]
    let _ = at;
}

/// `prefetcht0`: fetch the line for reading.
#[inline]
pub(crate) fn for_read(at: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(orcwire_loom)))]
    // SAFETY: SSE is part of the x86_64 baseline; a prefetch hint makes no
    // access and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>());
    }
    #[cfg(not(all(target_arch = "x86_64", not(orcwire_loom))))]
    let _ = at;
}

/// Whether this CPU has `cldemote` (CPUID leaf 7, ECX bit 25). Elsewhere
/// the instruction is a no-op, and a producer skips the loop that issues
/// it (a dozen instructions on every hand-over). Asked once per ring end:
/// in a virtual machine `cpuid` traps to the hypervisor.
pub(crate) fn can_demote() -> bool {
    #[cfg(all(target_arch = "x86_64", not(orcwire_loom)))]
    {
        // SAFETY: `cpuid` exists on every x86_64 CPU and only reads
        // identification registers (a safe function in newer Rust).
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        leaf.ecx >> 25 & 1 == 1
    }
    #[cfg(not(all(target_arch = "x86_64", not(orcwire_loom))))]
    false
}

/// `cldemote`: move the line from this core's private caches to the shared
/// one, where the other core's read finds it sooner (a no-op on CPUs
/// without the instruction).
#[inline]
pub(crate) fn demote(at: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(orcwire_loom)))]
    // SAFETY: a cache hint: no access, no fault, no register or flag
    // changed.
    unsafe {
        std::arch::asm!("cldemote [{0}]", in(reg) at, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(all(target_arch = "x86_64", not(orcwire_loom))))]
    let _ = at;
}
