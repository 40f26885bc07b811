#!/usr/bin/env python3
"""Runs every test binary of the workspace (`cargo test --workspace`) in parallel
lanes.

The cluster tests spend most of their time waiting on node processes (timeouts,
ceremonies, PostgreSQL and etcd), not on the CPU: run one binary after another
and a 2-core machine idles through most of `make test`. Here `TEST_LANES` (default
2) binaries run at once, the longest first (a binary's duration from the last run
in this checkout, else a seed figure below). Each binary's output goes to
`target/test-lanes/<package>.<binary>.log`; the logs of failed binaries are
printed in full at the end. Exits non-zero when any binary failed (every binary
still runs). Doc tests are not binaries: `make test` runs them with
`cargo test --workspace --doc`.

Each binary runs its tests as `cargo test` would (cwd = its package's directory,
ignored tests skipped, the same unified features as `cargo test --workspace`);
extra arguments are passed to every binary.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "test-lanes")
DURATIONS = os.path.join(OUT, "durations.json")

# Seconds each binary took in a serial CI run (2 cores); used until this checkout
# measured its own. Unknown binaries count as UNKNOWN.
SEED = {
    "presignatures": 255, "demo": 183, "reshare_cluster": 149, "kill_matrix": 145,
    "signing_culprits": 125, "dkg": 119, "hwi": 118, "hardening": 106,
    "signer_replaced": 90, "signing_safety": 89, "transactions": 88,
    "transactions_quorum": 85, "failover": 80, "aux_info": 68, "kek_rotation": 64,
    "dkg_equivocation": 63, "peer_flood": 60, "certificates": 59, "notify": 57,
    "custody": 54, "velocity": 53, "byzantine": 52, "backup_restore": 52,
    "audit_export": 45, "api": 39, "api_flood": 39,
}
UNKNOWN = 60
# Unit-test binaries of the other crates: seconds.
UNIT = 10


def package_dir(msg):
    """The directory of the artifact's package (`cargo test` runs binaries there)."""
    pid = msg.get("package_id", "")
    if pid.startswith("path+file://"):
        return pid[len("path+file://"):].split("#", 1)[0]
    d = os.path.dirname(msg["target"]["src_path"])
    while d != "/" and not os.path.exists(os.path.join(d, "Cargo.toml")):
        d = os.path.dirname(d)
    return d


def executables():
    """(name, path, cwd, seed seconds) of every test binary, built if needed."""
    build = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json"],
        cwd=ROOT, stdout=subprocess.PIPE, check=False,
    )
    if build.returncode != 0:
        sys.exit("test-lanes: building the tests failed")
    found = []
    for line in build.stdout.decode().splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg.get("profile", {}).get("test")):
            cwd = package_dir(msg)
            target = msg["target"]["name"]
            kind = "lib" if "lib" in msg["target"]["kind"] else msg["target"]["kind"][0]
            package = os.path.basename(cwd)
            name = f"{package}.{target}" if kind != "lib" else f"{package}.lib"
            if package == "tests":
                seed = SEED.get(target, UNKNOWN)
            else:
                seed = UNIT
            found.append((name, msg["executable"], cwd, seed))
    return found


def main():
    lanes = max(1, int(os.environ.get("TEST_LANES", "2")))
    extra = sys.argv[1:]
    os.makedirs(OUT, exist_ok=True)
    known = {}
    try:
        with open(DURATIONS) as f:
            known.update(json.load(f))
    except (OSError, ValueError):
        pass
    bins = sorted(executables(), key=lambda b: -known.get(b[0], b[3]))
    print(f"test-lanes: {len(bins)} test binaries in {lanes} lanes", flush=True)
    work = queue.Queue()
    for b in bins:
        work.put(b)
    results = {}
    lock = threading.Lock()

    def lane():
        while True:
            try:
                name, exe, cwd, _ = work.get_nowait()
            except queue.Empty:
                return
            log = os.path.join(OUT, f"{name}.log")
            start = time.monotonic()
            with open(log, "wb") as f:
                rc = subprocess.run([exe] + extra, cwd=cwd, stdout=f,
                                    stderr=subprocess.STDOUT, check=False).returncode
            secs = round(time.monotonic() - start)
            with lock:
                results[name] = (rc, secs, log)
                word = "ok  " if rc == 0 else "FAIL"
                print(f"test-lanes: {word} {name} ({secs} s)", flush=True)

    began = time.monotonic()
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(DURATIONS, "w") as f:
        json.dump({n: r[1] for n, r in results.items()}, f, indent=1, sort_keys=True)
    failed = sorted(n for n, r in results.items() if r[0] != 0)
    for name in failed:
        print(f"\n===== {name}: output ({results[name][2]}) =====", flush=True)
        with open(results[name][2], errors="replace") as f:
            sys.stdout.write(f.read())
    total = round(time.monotonic() - began)
    serial = sum(r[1] for r in results.values())
    print(f"\ntest-lanes: {len(results) - len(failed)} passed, {len(failed)} failed"
          f" in {total} s ({serial} s of binaries run one after another)", flush=True)
    if failed:
        print("test-lanes: failed: " + ", ".join(failed), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
