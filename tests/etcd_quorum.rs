//! etcd as in production: a 3-member etcd on loopback (`cluster up --etcd-members
//! 3`), every node taking all members as endpoints (issue 17). One member down:
//! everything works and `/ready` names the member that is down. Two down (quorum
//! lost): the nodes report etcd unreachable, key ceremonies fail closed with 503
//! `etcd_unavailable`. Members back: the cluster recovers by itself, no node
//! restarted, and a ceremony completes.
//!
//! etcd wiped: every member SIGKILLed, its data directory deleted, and started again
//! empty (a new etcd cluster at the same endpoints): every node re-registers and a
//! coordinator is elected again by themselves, no node restarted; `/ready` is 200
//! on every node, every node reports the same leader and three live nodes, and a
//! DKG ceremony and a payment complete.
//!
//! etcd restored from a snapshot (the operator's etcd backup, taken while the
//! cluster ran, so it holds registrations, leases and a coordinator key that are
//! stale by the time it is restored): the same recovery, by themselves.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use cluster_tests::wallet::{fund, pay, signed_everywhere, submit, verify_consensus};
use cluster_tests::Cluster;
use serde_json::{json, Value};

fn member_dir(c: &Cluster, m: usize) -> std::path::PathBuf {
    c.dir.join("etcd").join(format!("member-{m}"))
}

fn pid_of(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("etcd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// SIGKILLs etcd member `m` and waits until it is gone.
fn kill_member(c: &Cluster, m: usize) {
    let pid = nix::unistd::Pid::from_raw(pid_of(&member_dir(c, m)));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        // A zombie until its parent (the cluster supervisor) reaps it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") Z") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("etcd member {m} did not die");
}

/// Starts etcd member `m` again with its own command line and data (the pid file
/// is updated so `cluster down` stops it).
fn restart_member(c: &Cluster, m: usize) {
    let dir = member_dir(c, m);
    let args = std::fs::read_to_string(dir.join("etcd.args")).unwrap();
    cluster_tests::respawn(
        "etcd",
        args.lines(),
        &[("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)],
        &dir.join("etcd.log"),
        &dir.join("etcd.pid"),
    );
}

async fn ready(c: &Cluster, i: usize) -> (u16, Value) {
    let r = c.client().get(c.url(i, "/ready")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Per member: answered, and (when it did) knows a raft leader.
fn members_ok(v: &Value) -> Vec<bool> {
    v["etcd_members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["ok"] == true && m["has_leader"] == true)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `secs` until every node is ready (200) and sees the etcd members'
/// health as `members`.
async fn members_seen(c: &Cluster, what: &str, secs: u64, members: [bool; 3]) {
    c.eventually(what, Duration::from_secs(secs), || async {
        for i in 0..3 {
            let (s, v) = ready(c, i).await;
            if s != 200 || members_ok(&v) != members {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Waits until every node reports etcd unreachable (not ready, 503).
async fn etcd_unreachable_everywhere(c: &Cluster) {
    c.eventually(
        "etcd unreachable on every node",
        Duration::from_secs(60),
        || async {
            for i in 0..3 {
                let (s, v) = ready(c, i).await;
                if s != 503 || v["etcd"] != "unreachable" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// A FROST 2-of-3 ceremony started on node 0: its id once completed on every node,
/// or the first node's record of it when it failed.
async fn ceremony(c: &Cluster) -> Result<String, Value> {
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({"protocol": "frost", "threshold": 2}),
        )
        .await;
    if status != 202 {
        return Err(json!({ "status": status, "answer": v }));
    }
    let id = v["ceremony_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let path = format!("/api/v1/dkg/ceremonies/{id}");
        let v = c
            .eventually(
                &format!("ceremony {id} to end on node {i}"),
                Duration::from_secs(120),
                || async {
                    c.get_ok(i, &path)
                        .await
                        .filter(|v| v["state"] == "completed" || v["state"] == "failed")
                },
            )
            .await;
        if v["state"] != "completed" {
            return Err(v);
        }
    }
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (make test-faults): etcd members killed and restarted"]
async fn one_etcd_member_down_changes_nothing_two_down_fail_closed_and_recover() {
    let c = Cluster::start_with(3, 2, &["--etcd-members", "3"]);
    c.wait_ready(3).await;
    assert_eq!(
        c.file.etcd_endpoints.len(),
        3,
        "{:?}",
        c.file.etcd_endpoints
    );

    // Every node reports the three members, one of them the leader.
    for i in 0..3 {
        let v = c
            .eventually(
                &format!("node {i} probes 3 members"),
                Duration::from_secs(30),
                || async {
                    let (s, v) = ready(&c, i).await;
                    (s == 200 && members_ok(&v) == [true, true, true]).then_some(v)
                },
            )
            .await;
        let leaders = v["etcd_members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["leader"] == true)
            .count();
        assert_eq!(leaders, 1, "{v}");
        let status = c.get_json(i, "/api/v1/cluster/status").await;
        assert_eq!(
            status["etcd_members"].as_array().unwrap().len(),
            3,
            "{status}"
        );
    }

    // One member down: still ready, the member named, a ceremony completes.
    kill_member(&c, 0);
    members_seen(
        &c,
        "member 0 reported down by every node",
        30,
        [false, true, true],
    )
    .await;
    // A ceremony started right after a member died completes: the client may still
    // route a request to the dead member until its probe drops it, and such a
    // request is retried on a live member (`Coord::rpc_idempotent`; before, the
    // barrier or lease grant of this ceremony could time out).
    let key = ceremony(&c).await.unwrap_or_else(|v| {
        for i in 0..3 {
            let log = std::fs::read_to_string(&c.node(i).log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- node {i} log (tail)");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        panic!("the ceremony right after a member died failed: {v}")
    });
    assert!(!key.is_empty());

    // Two down: no quorum. Not ready, ceremonies refused with a stable code.
    kill_member(&c, 1);
    etcd_unreachable_everywhere(&c).await;
    let (status, v) = c
        .post_json(
            0,
            "/api/v1/dkg/start",
            &json!({"protocol": "frost", "threshold": 2}),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("etcd_unavailable")),
        "{v}"
    );

    // Members back: every node recovers by itself and a ceremony completes.
    restart_member(&c, 0);
    restart_member(&c, 1);
    members_seen(&c, "ready again with 3 members", 90, [true, true, true]).await;
    // Each node re-registers on its own (a new lease): the coordinator sees every
    // node live again; until then a ceremony is refused with 409
    // `participants_unavailable`, which is not what is tested here.
    c.eventually(
        "every node registered and connected again",
        Duration::from_secs(60),
        || async {
            let v = c.get_ok(0, "/api/v1/cluster/status").await?;
            (v["healthy_nodes"] == 3).then_some(())
        },
    )
    .await;
    let again = c.dkg(3, "frost", 2).await;
    assert_ne!(again, key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (make test-faults): etcd wiped and started empty"]
async fn etcd_wiped_nodes_reregister_reelect_and_sign_without_a_restart() {
    let started = std::time::Instant::now();
    let c = Cluster::start_with(3, 2, &["--etcd-members", "3"]);
    c.wait_ready(3).await;
    let before = ceremony(&c).await.unwrap();
    let pids: Vec<Option<u32>> = (0..3).map(|i| c.node_pid(i)).collect();

    lose_every_member_and_its_data(&c).await;
    for m in 0..3 {
        restart_member(&c, m);
    }
    eprintln!(
        "etcd wiped and restarted empty after {:?}",
        started.elapsed()
    );
    recovers_by_itself_and_signs(&c, &before, &pids).await;
    eprintln!("test done after {:?}", started.elapsed());
}

/// After etcd came back (wiped or restored): `/ready` on every node, every node
/// registered again and one coordinator elected, seen alike by every node; a DKG
/// ceremony and a payment complete; no node process was restarted.
async fn recovers_by_itself_and_signs(c: &Cluster, before: &str, pids: &[Option<u32>]) {
    let back = std::time::Instant::now();
    members_seen(c, "ready again with 3 members", 90, [true, true, true]).await;
    let leader = c
        .eventually(
            "every node registered again and one coordinator elected",
            Duration::from_secs(90),
            || async {
                let mut leader = None;
                for i in 0..3 {
                    let v = c.get_ok(i, "/api/v1/cluster/status").await?;
                    if v["healthy_nodes"] != 3 || v["source"] != "etcd" || v["leader"].is_null() {
                        return None;
                    }
                    if *leader.get_or_insert(v["leader"].clone()) != v["leader"] {
                        return None;
                    }
                }
                leader
            },
        )
        .await;
    eprintln!(
        "re-registered and re-elected ({leader}) {:?} after etcd came back",
        back.elapsed()
    );
    let after = c.dkg(3, "frost", 2).await;
    assert_ne!(after, before);
    c.write_policy(3, &[&after], 1_000_000);
    let f = fund(c, &after, &[40_000]).await;
    let id = submit(c, 0, &pay(&after, 10_000)).await;
    let tx = signed_everywhere(c, &[0, 1, 2], &id, 240).await;
    verify_consensus(&tx, &[&f]);
    // Nothing was restarted: the same node processes did all of it.
    let now: Vec<Option<u32>> = (0..3).map(|i| c.node_pid(i)).collect();
    assert_eq!(pids, now.as_slice(), "a node was restarted");
}

/// SIGKILLs every etcd member, deletes its data directory and waits until every
/// node reports etcd unreachable.
async fn lose_every_member_and_its_data(c: &Cluster) {
    for m in 0..3 {
        kill_member(c, m);
    }
    for m in 0..3 {
        std::fs::remove_dir_all(member_dir(c, m).join("data")).unwrap();
    }
    etcd_unreachable_everywhere(c).await;
}

/// Runs `etcdctl` (API v3) with `args`; panics with its stderr if it fails.
fn etcdctl(args: &[&str]) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of `flag` in member `m`'s command line (`etcd.args`, one word a line).
fn member_arg(c: &Cluster, m: usize, flag: &str) -> String {
    let args = std::fs::read_to_string(member_dir(c, m).join("etcd.args")).unwrap();
    let words: Vec<&str> = args.lines().collect();
    let at = words.iter().position(|w| *w == flag).unwrap();
    words[at + 1].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault suite (make test-faults): etcd restored from an older snapshot"]
async fn etcd_restored_from_a_snapshot_nodes_reregister_reelect_and_sign_without_a_restart() {
    let started = std::time::Instant::now();
    let c = Cluster::start_with(3, 2, &["--etcd-members", "3"]);
    let _logs = c.keep_logs_on_failure("etcd-restored");
    c.wait_ready(3).await;
    let pids: Vec<Option<u32>> = (0..3).map(|i| c.node_pid(i)).collect();
    // The operator's etcd backup, taken while the cluster runs: the nodes'
    // registrations, their leases and the coordinator's key as of now.
    let snap = c.dir.join("etcd-backup.db");
    etcdctl(&[
        "--endpoints",
        &member_arg(&c, 0, "--advertise-client-urls"),
        "snapshot",
        "save",
        &snap.display().to_string(),
    ]);
    // Life goes on after the backup: a ceremony, leases renewed.
    let before = ceremony(&c).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Every member lost; etcd restored from the backup, each member from the same
    // snapshot with its own name and peer URL (etcd's documented restore).
    lose_every_member_and_its_data(&c).await;
    for m in 0..3 {
        let arg = |flag: &str| member_arg(&c, m, flag);
        etcdctl(&[
            "snapshot",
            "restore",
            &snap.display().to_string(),
            "--data-dir",
            &member_dir(&c, m).join("data").display().to_string(),
            "--name",
            &arg("--name"),
            "--initial-cluster",
            &arg("--initial-cluster"),
            "--initial-cluster-token",
            &arg("--initial-cluster-token"),
            "--initial-advertise-peer-urls",
            &arg("--initial-advertise-peer-urls"),
        ]);
    }
    for m in 0..3 {
        restart_member(&c, m);
    }
    eprintln!(
        "etcd restored from the snapshot after {:?}",
        started.elapsed()
    );
    // The restored state holds the nodes' leases (their keep-alives succeed again)
    // and a stale coordinator key: the nodes must use etcd again as it is, without
    // a restart (before the fix, status looked healthy while etcd-backed requests
    // answered 503 "not connected").
    recovers_by_itself_and_signs(&c, &before, &pids).await;
    eprintln!("test done after {:?}", started.elapsed());
}
