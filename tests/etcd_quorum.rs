//! etcd as in production: a 3-member etcd on loopback (`cluster up --etcd-members
//! 3`), every node taking all members as endpoints (issue 17). One member down:
//! everything works and `/ready` names the member that is down. Two down (quorum
//! lost): the nodes report etcd unreachable, key ceremonies fail closed with 503
//! `etcd_unavailable`. Members back: the cluster recovers by itself, no node
//! restarted, and a ceremony completes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

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
    assert_eq!(status, 202, "{v}");
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
    c.eventually(
        "member 0 reported down by every node",
        Duration::from_secs(30),
        || async {
            for i in 0..3 {
                let (s, v) = ready(&c, i).await;
                if s != 200 || members_ok(&v) != [false, true, true] {
                    return None;
                }
            }
            Some(())
        },
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
    c.eventually(
        "etcd unreachable on every node",
        Duration::from_secs(60),
        || async {
            for i in 0..3 {
                let (s, v) = ready(&c, i).await;
                if s != 503 || v["etcd"] != "unreachable" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
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
    c.eventually(
        "ready again with 3 members",
        Duration::from_secs(90),
        || async {
            for i in 0..3 {
                let (s, v) = ready(&c, i).await;
                if s != 200 || members_ok(&v) != [true, true, true] {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
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
