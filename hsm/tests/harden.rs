//! Process hardening, in its own process (harness = false): `harden_process` must lock
//! memory (VmLck > 0, also for memory allocated afterwards), turn core dumps off and
//! make the process non-dumpable. A re-executed child without CAP_IPC_LOCK and with a
//! small RLIMIT_MEMLOCK must report that limit instead of locking.
//!
//! Needs CAP_IPC_LOCK or `ulimit -l unlimited` for the main case (the signer's systemd
//! unit grants one of them).

use std::process::Command;

use hsm::memory::{harden_process, process_hardening_status, LockedRegion, MlockStatus};
use hsm::SecretBytes;

const CHILD_ENV: &str = "HSM_HARDEN_TEST_CHILD";

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        limited_child();
        return;
    }
    let mut failures = 0;
    for (name, f) in [
        (
            "harden_process_locks_memory_and_makes_the_process_undumpable",
            harden_locks_memory as fn(),
        ),
        (
            "harden_process_reports_a_too_low_memlock_limit",
            reports_low_limit as fn(),
        ),
    ] {
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        std::process::exit(1);
    }
}

fn harden_locks_memory() {
    let before = process_hardening_status().expect("status");
    assert_ne!(before.dumpable, 0, "test process starts dumpable");
    assert_eq!(before.locked_kib, 0, "nothing locked before hardening");

    let report = harden_process();
    assert_eq!(
        report.mlock,
        MlockStatus::Locked,
        "{report} (needs CAP_IPC_LOCK or ulimit -l unlimited)"
    );
    assert!(report.is_fully_hardened(), "{report}");

    let after = process_hardening_status().expect("status");
    assert!(after.locked_kib > 0, "VmLck = {} kB", after.locked_kib);
    assert_eq!(after.dumpable, 0);
    assert_eq!(after.core_limit, 0);
    assert!(after.is_hardened());

    // MCL_FUTURE: memory touched after hardening is locked as well.
    let secret = SecretBytes::new(vec![0x5a; 8 * 1024 * 1024]);
    let grown = process_hardening_status().expect("status");
    assert!(
        grown.locked_kib >= after.locked_kib + 8 * 1024 - 64,
        "VmLck {} kB -> {} kB after an 8 MiB secret",
        after.locked_kib,
        grown.locked_kib
    );
    assert_eq!(secret.len(), 8 * 1024 * 1024);

    let region = LockedRegion::from_secret(b"share").expect("locked region");
    assert!(region.is_locked());

    // A locked process's allocator keeps to MALLOC_ARENAS_WHEN_LOCKED arenas, even
    // with eight threads allocating at once (glibc's default would give each its
    // own, up to eight per core).
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let blocks: Vec<Vec<u8>> = (0..64).map(|j| vec![i; 1024 + j]).collect();
                barrier.wait();
                blocks.len()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("allocating thread"), 64);
    }
    let arenas = hsm::memory::malloc_arenas().expect("glibc malloc_info");
    assert!(
        arenas <= hsm::memory::MALLOC_ARENAS_WHEN_LOCKED as usize,
        "{arenas} arenas"
    );
}

fn reports_low_limit() {
    let exe = std::env::current_exe().expect("current exe");
    // A small hard limit for the child; if we hold CAP_IPC_LOCK (e.g. root), the child
    // must lose it too, or the limit would not apply.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--memlock=65536:65536");
    if has_cap_ipc_lock() {
        cmd.args([
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "--",
        ]);
    }
    let out = cmd
        .arg(exe)
        .env(CHILD_ENV, "1")
        .output()
        .expect("run prlimit/setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(stdout.contains("child ok"), "{stdout}");
}

fn has_cap_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

fn limited_child() {
    let report = harden_process();
    match &report.mlock {
        MlockStatus::LimitTooLow {
            soft_limit,
            hard_limit,
        } => {
            assert_eq!((*soft_limit, *hard_limit), (65536, 65536));
        }
        other => panic!("expected LimitTooLow, got {other:?}"),
    }
    assert!(!report.is_fully_hardened());
    assert!(report.to_string().contains("RLIMIT_MEMLOCK"), "{report}");
    let st = process_hardening_status().expect("status");
    assert_eq!(st.locked_kib, 0);
    assert_eq!(st.dumpable, 0, "dumpable is cleared even without mlock");
    assert_eq!(st.core_limit, 0);
    println!("child ok");
}
