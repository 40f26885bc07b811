//! Secret memory: process hardening (mlockall, no core dumps, not dumpable), a
//! zeroizing byte container and an optional locked, non-dumpable memory region.
//!
//! This is the only module of the workspace that contains `unsafe` code: thin calls
//! into libc, each with a `// SAFETY:` comment.
#![allow(unsafe_code)]

use std::fmt;
use std::io;

use zeroize::Zeroize;

use crate::error::HsmError;

/// Bytes that must never be logged, swapped out, or left behind in freed memory.
///
/// Zeroized on drop (the whole capacity of the buffer). `Debug` prints only the length.
/// Deliberately neither `Clone` nor `Serialize`: the only way to persist it is
/// [`crate::envelope::seal`].
pub struct SecretBytes {
    bytes: Vec<u8>,
}

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroized when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes { bytes }
    }

    /// Copies `bytes` into a buffer of exactly that capacity (no reallocation later).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut v = Vec::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        SecretBytes { bytes: v }
    }

    /// The secret bytes. Keep the borrow short and never log it.
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl secrecy::ExposeSecret<[u8]> for SecretBytes {
    fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // `Vec::zeroize` clears the full capacity, then truncates.
        self.bytes.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.bytes.len())
    }
}

/// A page-aligned, anonymous memory region that is `mlock`ed (never swapped),
/// excluded from core dumps (`MADV_DONTDUMP`) and from children after `fork`
/// (`MADV_WIPEONFORK`), and zeroized before it is unmapped.
///
/// Use it for long-lived secrets (a loaded key share) when the whole process cannot be
/// locked with `mlockall`.
pub struct LockedRegion {
    ptr: std::ptr::NonNull<u8>,
    map_len: usize,
    len: usize,
    locked: bool,
}

// SAFETY: the region is exclusively owned by this value (like a `Box<[u8]>`); the raw
// pointer is never shared, so moving it to another thread or sharing `&LockedRegion`
// (which only hands out `&[u8]`) is as safe as for a `Box<[u8]>`.
unsafe impl Send for LockedRegion {}
// SAFETY: see `Send`; `&LockedRegion` only gives shared read access.
unsafe impl Sync for LockedRegion {}

impl LockedRegion {
    /// Maps a zero-filled region of `len` bytes (rounded up to whole pages internally).
    ///
    /// Fails only if the mapping itself fails; if `mlock` is refused (RLIMIT_MEMLOCK),
    /// the region is still returned and [`LockedRegion::is_locked`] reports `false`.
    pub fn new(len: usize) -> Result<Self, HsmError> {
        let page = page_size();
        let map_len = len
            .max(1)
            .div_ceil(page)
            .checked_mul(page)
            .ok_or(HsmError::TooLarge {
                what: "locked region",
                len,
                max: isize::MAX as usize,
            })?;
        // SAFETY: an anonymous private mapping with a null hint has no preconditions;
        // the result is checked against MAP_FAILED before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(sys_err("mmap"));
        }
        let ptr = std::ptr::NonNull::new(raw.cast::<u8>()).ok_or_else(|| sys_err("mmap"))?;
        // SAFETY: `raw`/`map_len` describe exactly the mapping created above.
        let locked = unsafe { libc::mlock(raw, map_len) } == 0;
        // SAFETY: as above; madvise on our own mapping only changes dump/fork behaviour.
        let dontdump = unsafe { libc::madvise(raw, map_len, libc::MADV_DONTDUMP) } == 0;
        // SAFETY: as above.
        let wipeonfork = unsafe { libc::madvise(raw, map_len, libc::MADV_WIPEONFORK) } == 0;
        if !dontdump || !wipeonfork {
            tracing::warn!(dontdump, wipeonfork, "madvise on locked region failed");
        }
        if !locked {
            tracing::warn!(
                bytes = map_len,
                "mlock of secret region refused (RLIMIT_MEMLOCK?)"
            );
        }
        Ok(LockedRegion {
            ptr,
            map_len,
            len,
            locked,
        })
    }

    /// Copies `secret` into a new locked region.
    pub fn from_secret(secret: &[u8]) -> Result<Self, HsmError> {
        let mut r = LockedRegion::new(secret.len())?;
        r.as_mut_slice().copy_from_slice(secret);
        Ok(r)
    }

    /// Whether `mlock` succeeded for this region.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The usable bytes (the length asked for, not the page-rounded size).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `map_len >= len` readable bytes owned by `self`, alive
        // until drop; the shared borrow of `self` prevents concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Mutable access to the usable bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes this the only
        // reference into the region.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Length of the usable bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the usable length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours and writable; no borrow outlives `self`.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len) };
        all.zeroize();
        // SAFETY: unlocking/unmapping exactly the region mapped in `new`; nothing
        // refers to it after this point.
        unsafe {
            if self.locked {
                libc::munlock(self.ptr.as_ptr().cast(), self.map_len);
            }
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

impl fmt::Debug for LockedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LockedRegion([REDACTED; {} bytes], locked: {})",
            self.len, self.locked
        )
    }
}

/// Outcome of the `mlockall` step of [`harden_process`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MlockStatus {
    /// All current and future pages are locked (faulted-in pages stay resident).
    Locked,
    /// Not attempted: `RLIMIT_MEMLOCK` is finite and the process lacks
    /// `CAP_IPC_LOCK`, so locking all future memory would make later allocations fail.
    /// Fix: `LimitMEMLOCK=infinity` or `AmbientCapabilities=CAP_IPC_LOCK` in the unit.
    LimitTooLow {
        /// Soft limit in bytes after trying to raise it to the hard limit.
        soft_limit: u64,
        /// Hard limit in bytes.
        hard_limit: u64,
    },
    /// `mlockall` was attempted and refused.
    Failed {
        /// errno text.
        reason: String,
    },
}

/// What [`harden_process`] achieved. The daemon logs it at start and may refuse to
/// run unsealed secrets when [`HardeningReport::is_fully_hardened`] is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardeningReport {
    /// Result of `mlockall`.
    pub mlock: MlockStatus,
    /// `RLIMIT_CORE` is now 0.
    pub core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` is now 0 (no core dumps, no ptrace by same-uid processes,
    /// /proc/self/mem and friends owned by root).
    pub not_dumpable: bool,
    /// Human-readable problems, empty when fully hardened.
    pub warnings: Vec<String>,
}

impl HardeningReport {
    /// Memory locked, core dumps off and not dumpable.
    pub fn is_fully_hardened(&self) -> bool {
        self.mlock == MlockStatus::Locked && self.core_dumps_disabled && self.not_dumpable
    }
}

impl fmt::Display for HardeningReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mlock = match &self.mlock {
            MlockStatus::Locked => "locked".to_string(),
            MlockStatus::LimitTooLow {
                soft_limit,
                hard_limit,
            } => {
                format!("not locked (RLIMIT_MEMLOCK soft {soft_limit} / hard {hard_limit} bytes and no CAP_IPC_LOCK)")
            }
            MlockStatus::Failed { reason } => format!("not locked (mlockall: {reason})"),
        };
        write!(
            f,
            "memory: {mlock}; core dumps: {}; dumpable: {}",
            if self.core_dumps_disabled {
                "off"
            } else {
                "ON"
            },
            if self.not_dumpable { "no" } else { "YES" }
        )
    }
}

/// Locks the process's memory and turns off core dumps. Call it first thing in
/// `main`, before any secret is loaded and before threads are spawned.
///
/// 1. `RLIMIT_CORE` = 0 (soft and hard).
/// 2. `prctl(PR_SET_DUMPABLE, 0)`.
/// 3. Raises the soft `RLIMIT_MEMLOCK` to the hard limit; if the limit is then
///    unlimited or the process has `CAP_IPC_LOCK`, calls
///    `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` (`MCL_ONFAULT` keeps huge
///    reserved-but-untouched mappings such as thread stacks from being populated;
///    every page that is ever touched, and so every secret, is locked). Otherwise
///    it does not lock (see [`MlockStatus::LimitTooLow`]), because locking future
///    memory under a finite limit turns later allocations into aborts.
///
/// Never fails: each step's result is in the report and logged.
pub fn harden_process() -> HardeningReport {
    let mut warnings = Vec::new();

    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid, initialised rlimit that outlives the call.
    let core_dumps_disabled = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } == 0;
    if !core_dumps_disabled {
        warnings.push(format!(
            "setrlimit(RLIMIT_CORE, 0): {}",
            io::Error::last_os_error()
        ));
    }

    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the unused ones are 0.
    let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    if !not_dumpable {
        warnings.push(format!(
            "prctl(PR_SET_DUMPABLE, 0): {}",
            io::Error::last_os_error()
        ));
    }

    let mlock = lock_all_memory();
    match &mlock {
        MlockStatus::Locked => limit_malloc_arenas(),
        other => warnings.push(format!("memory not locked: {other:?}")),
    }

    let report = HardeningReport {
        mlock,
        core_dumps_disabled,
        not_dumpable,
        warnings,
    };
    if report.is_fully_hardened() {
        tracing::info!(%report, "process hardened");
    } else {
        tracing::warn!(%report, warnings = ?report.warnings, "process only partly hardened");
    }
    report
}

/// Arenas the C allocator may use in a process locked in memory (glibc's default is
/// eight per core). A locked page cannot be given back (`MADV_DONTNEED` is refused
/// on locked pages), so each arena keeps the high-water mark of every burst its
/// threads saw resident as free heap; fewer arenas share that free heap. Measured
/// in docs/BENCHMARKS.md ("Session 31"): about 2.5 MiB less resident memory per
/// node after a 10,000-payment soak, at the same rate.
pub const MALLOC_ARENAS_WHEN_LOCKED: i32 = 2;

/// Caps the C allocator's arenas at [`MALLOC_ARENAS_WHEN_LOCKED`], unless the
/// operator chose a number with `GLIBC_TUNABLES=glibc.malloc.arena_max=…` (glibc
/// only; called before any thread exists).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max")) {
            return;
        }
        // SAFETY: mallopt only sets a parameter of glibc's allocator; it is called
        // from `harden_process`, before the process starts any thread.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_WHEN_LOCKED) } == 1;
        if !ok {
            tracing::warn!("mallopt(M_ARENA_MAX) refused; the allocator keeps its default arenas");
        }
    }
}

/// How many arenas the C allocator uses now (glibc's `malloc_info`); `None` where
/// the C library is not glibc or the report cannot be read.
pub fn malloc_arenas() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream writes the buffer pointer and its size into the two
        // valid out-pointers; the stream is closed before either is read.
        let stream = unsafe { libc::open_memstream(&mut buf, &mut len) };
        if stream.is_null() {
            return None;
        }
        // SAFETY: `stream` is a valid, open FILE; malloc_info only writes to it.
        let rc = unsafe { libc::malloc_info(0, stream) };
        // SAFETY: `stream` is open and closed once; closing sets `buf` and `len`.
        unsafe { libc::fclose(stream) };
        if buf.is_null() {
            return None;
        }
        // SAFETY: after fclose, `buf` points to `len` initialised bytes owned by us.
        let text =
            String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
                .into_owned();
        // SAFETY: `buf` was allocated by open_memstream with malloc.
        unsafe { libc::free(buf.cast()) };
        (rc == 0).then(|| text.matches("<heap nr=").count())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

fn lock_all_memory() -> MlockStatus {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return MlockStatus::Failed {
            reason: format!("getrlimit(RLIMIT_MEMLOCK): {}", io::Error::last_os_error()),
        };
    }
    if lim.rlim_cur != lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            lim = raised;
        }
    }
    let unlimited = lim.rlim_cur == libc::RLIM_INFINITY;
    if !unlimited && !has_cap_ipc_lock() {
        return MlockStatus::LimitTooLow {
            soft_limit: lim.rlim_cur,
            hard_limit: lim.rlim_max,
        };
    }
    // SAFETY: mlockall only changes paging of this process's own mappings.
    let mut rc =
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 4.4 do not know MCL_ONFAULT.
        // SAFETY: as above.
        rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    }
    if rc == 0 {
        MlockStatus::Locked
    } else {
        MlockStatus::Failed {
            reason: io::Error::last_os_error().to_string(),
        }
    }
}

/// What the C allocator holds for this process (glibc's `mallinfo2`, summed over
/// its arenas). With the process locked in memory (`mlockall`), a page the heap
/// ever touched stays resident, so `in_use_bytes + free_bytes` is close to the
/// heap's share of the resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes in blocks the program holds (its live heap), including `mmap`ed blocks.
    pub in_use_bytes: u64,
    /// Bytes in free blocks the allocator keeps for reuse (not returned to the system).
    pub free_bytes: u64,
    /// Bytes in blocks allocated with `mmap` (part of `in_use_bytes`; returned to
    /// the system when freed).
    pub mmap_bytes: u64,
}

/// This process's [`HeapUsage`]; `None` where the C library is not glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_usage() -> Option<HeapUsage> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it
    // only reads the allocator's own counters (under the arenas' locks).
    let m = unsafe { libc::mallinfo2() };
    let bytes = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    Some(HeapUsage {
        in_use_bytes: bytes(m.uordblks).saturating_add(bytes(m.hblkhd)),
        free_bytes: bytes(m.fordblks),
        mmap_bytes: bytes(m.hblkhd),
    })
}

/// This process's [`HeapUsage`]; `None` where the C library is not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_usage() -> Option<HeapUsage> {
    None
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Checks that a secret file (PIN, private key) is a regular file of mode 0600 or
/// stricter (no group or other access) owned by this process's effective user.
/// The error names the problem, never the file's content.
pub fn check_private_file(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:03o} gives other users access; chmod 600 it"
        ));
    }
    let euid = effective_uid();
    if meta.uid() != euid {
        return Err(format!(
            "owned by uid {}, not by the service user (uid {euid})",
            meta.uid()
        ));
    }
    Ok(())
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1u64 << CAP_IPC_LOCK) != 0)
}

/// The process's current hardening state, for `/ready` and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardeningStatus {
    /// `VmLck` from /proc/self/status, in KiB.
    pub locked_kib: u64,
    /// `prctl(PR_GET_DUMPABLE)` (0 = not dumpable).
    pub dumpable: i32,
    /// Soft `RLIMIT_CORE` in bytes.
    pub core_limit: u64,
}

impl HardeningStatus {
    /// Memory is locked, the process is not dumpable and core dumps are off.
    pub fn is_hardened(&self) -> bool {
        self.locked_kib > 0 && self.dumpable == 0 && self.core_limit == 0
    }
}

/// The value of a `Field:   1234 kB` line of /proc/self/status (`field` with its
/// colon).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// This process's resident set size (`VmRSS`, KiB); `None` without /proc.
pub fn resident_kib() -> Option<u64> {
    status_kib(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// Reads `VmLck` from /proc/self/status, the dumpable flag and `RLIMIT_CORE`.
pub fn process_hardening_status() -> Result<HardeningStatus, HsmError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| HsmError::System {
        call: "read /proc/self/status",
        reason: e.to_string(),
    })?;
    let locked_kib = status_kib(&status, "VmLck:").ok_or_else(|| HsmError::System {
        call: "parse /proc/self/status",
        reason: "no VmLck line".into(),
    })?;
    // SAFETY: PR_GET_DUMPABLE takes no arguments and returns the flag.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if dumpable < 0 {
        return Err(sys_err("prctl(PR_GET_DUMPABLE)"));
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 {
        return Err(sys_err("getrlimit(RLIMIT_CORE)"));
    }
    Ok(HardeningStatus {
        locked_kib,
        dumpable,
        core_limit: lim.rlim_cur,
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

fn sys_err(call: &'static str) -> HsmError {
    HsmError::System {
        call,
        reason: io::Error::last_os_error().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_debug_is_redacted() {
        let s = SecretBytes::from_slice(b"hunter2-very-secret");
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("REDACTED"), "{d}");
        assert_eq!(s.expose_secret(), b"hunter2-very-secret");
    }

    #[test]
    fn locked_region_debug_is_redacted_and_holds_the_secret() {
        let r = LockedRegion::from_secret(b"top-secret-share").expect("mmap of one page");
        let d = format!("{r:?}");
        assert!(!d.contains("top-secret"), "{d}");
        assert!(d.contains("REDACTED"), "{d}");
        assert_eq!(r.as_slice(), b"top-secret-share");
        assert_eq!(r.len(), 16);
    }

    /// A block the program holds is counted in use while it is held, and no longer
    /// once it is freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_usage_counts_a_held_block_and_not_a_freed_one() {
        const BLOCK: usize = 4 << 20;
        let before = heap_usage().expect("glibc");
        let block = vec![1u8; BLOCK];
        let held = heap_usage().expect("glibc");
        assert!(
            held.in_use_bytes >= before.in_use_bytes + BLOCK as u64 / 2,
            "{before:?} -> {held:?}"
        );
        drop(std::hint::black_box(block));
        let after = heap_usage().expect("glibc");
        assert!(
            after.in_use_bytes + (BLOCK as u64) / 2 <= held.in_use_bytes,
            "{held:?} -> {after:?}"
        );
    }

    #[test]
    fn resident_size_reads_proc() {
        let kib = resident_kib().expect("linux /proc");
        assert!(kib > 100, "VmRSS {kib} KiB");
    }

    #[test]
    fn hardening_status_reads_proc() {
        let st = process_hardening_status().expect("linux /proc");
        // The test process itself is not hardened (that is checked in tests/harden.rs).
        assert!(
            st.dumpable == 1 || st.dumpable == 2,
            "dumpable = {}",
            st.dumpable
        );
    }
}
