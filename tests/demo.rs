//! The front door: `make demo` exactly as the Makefile runs it (its `$(SIGNER)`
//! lines, read from the Makefile), from a cluster directory under a parent only
//! its owner can enter, then `cluster demo-sign` a second time on the same
//! cluster, and the `signer aux-info` commands and their errors.
#![allow(clippy::unwrap_used)] // test: a failed step must fail loudly

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cluster_tests::signer_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `$(SIGNER) ...` command lines of the Makefile's `demo` recipe, with the
/// Makefile's variables replaced.
fn demo_recipe(cluster_dir: &Path) -> Vec<Vec<String>> {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let mut lines = makefile.lines().skip_while(|l| !l.starts_with("demo:"));
    assert!(lines.next().is_some(), "Makefile has no demo target");
    let file = cluster_dir.join("cluster.json");
    lines
        .take_while(|l| l.starts_with('\t'))
        .map(str::trim)
        .filter(|l| l.starts_with("$(SIGNER) "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|w| {
                    w.replace("$(CLUSTER_FILE)", file.to_str().unwrap())
                        .replace("$(CLUSTER_DIR)", cluster_dir.to_str().unwrap())
                })
                .collect()
        })
        .collect()
}

fn signer(args: &[String]) -> Output {
    let out = Command::new(signer_bin())
        .args(args)
        .current_dir(repo())
        .env_remove("SIGNER_CLUSTER")
        .output()
        .unwrap();
    eprintln!(
        "$ signer {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[String]) -> String {
    let out = signer(args);
    assert!(out.status.success(), "signer {} failed", args.join(" "));
    String::from_utf8(out.stdout).unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Stops the detached demo cluster however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(signer_bin())
            .args(["cluster", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

/// The txids of the demo's summary, one per key type; asserts both types were
/// signed and verified.
fn signed_txids(out: &str) -> Vec<String> {
    let summary: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("signed transactions (verified with libbitcoinconsensus)"))
        .skip(1)
        .collect();
    let mut txids = Vec::new();
    for ty in ["ecdsa", "taproot"] {
        let line = summary
            .iter()
            .find(|l| l.trim_start().starts_with(ty))
            .unwrap_or_else(|| panic!("no signed {ty} transaction in the demo's summary:\n{out}"));
        assert!(line.contains("input(s) valid"), "{line}");
        let txid = line
            .split_whitespace()
            .skip_while(|w| *w != "txid")
            .nth(1)
            .unwrap();
        assert_eq!(txid.len(), 64, "{line}");
        txids.push(txid.to_owned());
    }
    txids
}

#[test]
fn make_demo_runs_twice_on_its_cluster_from_a_private_parent_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("signer-demo-")
        .tempdir_in("/tmp")
        .unwrap();
    // A home directory only its owner can enter (Debian's /root is 0700).
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = home.join("signer").join(".cluster");
    let file = dir.join("cluster.json");
    let _down = Down(dir.clone());

    let recipe = demo_recipe(&dir);
    let position = |what: &[&str]| {
        recipe
            .iter()
            .position(|l| what.iter().all(|w| l.iter().any(|a| a == w)))
            .unwrap_or_else(|| panic!("the demo recipe has no {what:?} line: {recipe:?}"))
    };
    let up = position(&["cluster", "up"]);
    let ecdsa = position(&["dkg", "start", "ecdsa"]);
    let taproot = position(&["dkg", "start", "taproot"]);
    let demo = position(&["cluster", "demo-sign"]);
    assert!(up < ecdsa && ecdsa < demo && taproot < demo, "{recipe:?}");

    let cluster = |args: &[&str]| {
        let mut v = strings(args);
        v.extend(strings(&["--cluster", file.to_str().unwrap()]));
        v
    };
    let mut demo_outputs = Vec::new();
    for (i, line) in recipe.iter().enumerate() {
        if i == ecdsa {
            // Before any ECDSA key: aux info is refused by the CLI, with the reason.
            let out = signer(&cluster(&["aux-info", "start", "--wait"]));
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("holds no ECDSA key"), "{err}");
        }
        let out = ok(line);
        if i == demo {
            demo_outputs.push(out);
        }
    }
    let external = dir.join("postgres").join("external-data");
    if nix::unistd::Uid::effective().is_root() {
        // The postgres user cannot enter `home`: its data lives outside.
        assert!(
            external.is_file(),
            "PostgreSQL data inside a private parent"
        );
    }
    let external = std::fs::read_to_string(&external).ok();

    // The front door again on the same cluster: reused, paid again, fresh txids.
    let again = ok(&recipe[up]);
    assert!(again.contains("reused"), "{again}");
    demo_outputs.push(ok(&recipe[demo]));
    let first = signed_txids(&demo_outputs[0]);
    let second = signed_txids(&demo_outputs[1]);
    assert_ne!(first, second);
    // Without --reuse a running cluster is refused in one line naming what to do.
    let mut no_reuse = recipe[up].clone();
    no_reuse.retain(|a| a != "--reuse");
    let out = signer(&no_reuse);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster down"), "{err}");

    // aux-info CLI on a cluster with an ECDSA key: a forced new ceremony completes
    // and `status` shows it.
    let started = ok(&cluster(&["aux-info", "start", "--wait", "--force"]));
    let id = started
        .lines()
        .find_map(|l| l.strip_prefix("aux info ceremony "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no ceremony id in {started}"))
        .to_owned();
    assert!(started.contains(&format!("{id} completed")), "{started}");
    let status = ok(&cluster(&["aux-info", "status"]));
    let row = status
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in aux-info status:\n{status}"));
    assert!(row.contains("completed"), "{row}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&cluster(&["aux-info", "status", "--json"]))).unwrap();
    assert!(json["ceremonies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str() && c["state"] == "completed"));

    // `signer status` shows the keys (both types), and no transaction left pending
    // (the demo's payments are signed).
    let text = ok(&strings(&["status", "--cluster", file.to_str().unwrap()]));
    let status_json = || -> serde_json::Value {
        serde_json::from_str(&ok(&strings(&[
            "status",
            "--json",
            "--cluster",
            file.to_str().unwrap(),
        ])))
        .unwrap()
    };
    let v = status_json();
    let keys = v["keys"].as_array().unwrap();
    for kind in ["ecdsa", "taproot"] {
        let k = keys
            .iter()
            .find(|k| k["key_type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} key in status: {v}"));
        let id = k["key_id"].as_str().unwrap();
        assert!(text.contains(id), "{id} not in the table:\n{text}");
    }
    assert_eq!(v["pending_transactions"], serde_json::json!([]), "{v}");
    assert!(text.contains("pending transactions: 0"), "{text}");

    // A node down: the node's refusal (status and code) reaches the operator.
    let cf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let last = cf["nodes"].as_array().unwrap().last().unwrap();
    let pid: i32 =
        std::fs::read_to_string(Path::new(last["dir"].as_str().unwrap()).join("node.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let node_id = last["id"].as_str().unwrap().to_owned();
    let seen_down = (0..60).any(|_| {
        let v = status_json();
        let down = v["cluster_status"]["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["node_id"] == node_id.as_str() && n["healthy"] == false)
        });
        if !down {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        down
    });
    assert!(seen_down, "{node_id} still healthy a minute after SIGKILL");
    let out = signer(&cluster(&[
        "aux-info", "start", "--force", "--node", "node-1",
    ]));
    let refused =
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned());
    let err = refused.expect("aux-info start kept succeeding with a node down");
    assert!(
        err.contains("409 participants_unavailable") || err.contains("503"),
        "{err}"
    );

    ok(&strings(&[
        "cluster",
        "down",
        "--dir",
        dir.to_str().unwrap(),
    ]));
    if let Some(ext) = external {
        assert!(
            !Path::new(ext.trim()).exists(),
            "external PostgreSQL data left behind"
        );
    }
}
