//! Operator CLI behaviour that needs no running cluster.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use cluster_tests::signer_bin;

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["node", "run", "--help"],
        vec!["cluster", "up", "--help"],
        vec!["cluster", "down", "--help"],
        vec!["cluster", "demo-sign", "--help"],
        vec!["ca", "init", "--help"],
        vec!["ca", "issue", "--help"],
        vec!["status", "--help"],
        vec!["token", "create", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["policy", "check", "--help"],
        vec!["policy", "eval", "--help"],
        vec!["hsm", "init", "--help"],
        vec!["hsm", "check", "--help"],
        vec!["dkg", "start", "--help"],
        vec!["dkg", "status", "--help"],
        vec!["aux-info", "start", "--help"],
        vec!["aux-info", "status", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "addresses", "--help"],
        vec!["tx", "submit", "--help"],
        vec!["tx", "status", "--help"],
        vec!["tx", "approve", "--help"],
        vec!["utxos", "import", "--help"],
    ] {
        let out = Command::new(signer_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn policy_check_accepts_the_example_and_prints_its_hash() {
    let out = Command::new(signer_bin())
        .args(["policy", "check", "--json"])
        .arg(repo("policy/examples/treasury.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["policy_hash"].as_str().unwrap().len(), 64, "{v}");
}

#[test]
fn policy_check_names_file_line_and_reason_of_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\n\n[defaults]\nmax_amout_sats = 5\n").unwrap();
    let out = Command::new(signer_bin())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:"), "{err}");
}

#[test]
fn policy_eval_exit_status_tells_the_decision() {
    let out = Command::new(signer_bin())
        .args(["policy", "eval"])
        .arg(repo("policy/examples/treasury.toml"))
        .arg(repo("policy/examples/eval-request.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs_approval"));
}

#[test]
fn node_run_with_a_broken_config_fails_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "node_id = \"Node 1\"\n").unwrap();
    let out = Command::new(signer_bin())
        .args(["node", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.toml") && err.contains("missing field"),
        "{err}"
    );
}

#[test]
fn dkg_start_help_names_the_protocol_aliases_and_api_options() {
    let out = Command::new(signer_bin())
        .args(["dkg", "start", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "ecdsa",
        "taproot",
        "--threshold",
        "--participants",
        "--wait",
        "--api-url",
        "--ca-cert",
        "--token-file",
        "--cluster",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
}

#[test]
fn keys_list_without_a_cluster_file_or_token_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(signer_bin())
        .current_dir(dir.path())
        .env_remove("SIGNER_API_TOKEN")
        .env_remove("SIGNER_API_TOKEN_FILE")
        .env_remove("SIGNER_CA_CERT")
        .env_remove("SIGNER_CLUSTER")
        .args(["keys", "list", "--api-url", "https://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no API token") && err.contains("--token-file"),
        "{err}"
    );
    let out = Command::new(signer_bin())
        .current_dir(dir.path())
        .env_remove("SIGNER_CLUSTER")
        .args(["keys", "addresses", "k", "--count", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'many' for '--count"), "{err}");
}

#[test]
fn tx_and_utxos_commands_refuse_bad_arguments_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(signer_bin())
            .current_dir(dir.path())
            .env_remove("SIGNER_CLUSTER")
            .env_remove("SIGNER_API_URL")
            .args(args)
            .output()
            .unwrap()
    };
    // Usage errors (clap, status 2).
    for (args, needle) in [
        (
            vec!["tx", "submit", "--key", "k", "--to", "bcrt1qxyz"],
            "--amount",
        ),
        (vec!["tx", "submit", "--key", "k"], "--psbt"),
        (
            vec!["tx", "submit", "--psbt", "p", "--to", "a", "--amount", "1"],
            "cannot be used with",
        ),
        (vec!["tx", "submit", "--to", "a", "--amount", "1"], "--key"),
        (
            vec!["tx", "submit", "--key", "k", "--to", "a", "--amount", "-5"],
            "'-5'",
        ),
        (vec!["utxos", "import"], "--tx-hex"),
        (
            vec!["utxos", "import", "--tx-hex", "00", "--file", "f"],
            "cannot be used with",
        ),
        (vec!["tx", "status", "--limit", "ten"], "--limit"),
        (vec!["tx", "approve"], "<ID>"),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Checked values (status 1, before connecting anywhere).
    std::fs::write(dir.path().join("empty.psbt"), "\n").unwrap();
    for (args, needle) in [
        (
            vec!["tx", "status", "nope"],
            "transaction id \"nope\" is not a uuid",
        ),
        (
            vec![
                "tx",
                "approve",
                "../keys",
                "--approver",
                "a",
                "--key-file",
                "k",
            ],
            "is not a uuid",
        ),
        (
            vec!["tx", "status", "--state", "signed&limit=9"],
            "--state \"signed&limit=9\" is not valid",
        ),
        (
            vec!["tx", "submit", "--psbt", "missing.psbt"],
            "cannot read PSBT file missing.psbt",
        ),
        (
            vec!["tx", "submit", "--psbt", "empty.psbt"],
            "neither a binary PSBT nor base64",
        ),
        (vec!["utxos", "import", "--tx-hex", "xyz"], "is not hex"),
        (
            vec!["utxos", "import", "--file", "missing.tx"],
            "cannot read transaction file missing.tx",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(signer_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _signer"),
        ("zsh", "#compdef signer"),
        ("fish", "complete -c signer"),
    ] {
        let (ok, text) = run(&["completions", shell]);
        assert!(ok, "{shell}: {text}");
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for cmd in ["dkg", "aux-info", "tx", "keys", "audit", "completions"] {
            assert!(text.contains(cmd), "{shell}: {cmd} missing");
        }
    }
    let (ok, text) = run(&["completions", "tcsh"]);
    assert!(!ok && text.contains("invalid value 'tcsh'"), "{text}");
}

#[test]
fn man_prints_the_page_and_writes_one_page_per_command() {
    let (ok, text) = run(&["man"]);
    assert!(ok, "{text}");
    assert!(
        text.starts_with(".ie") || text.contains(".TH signer"),
        "{text}"
    );
    assert!(text.contains("aux\\-info"), "subcommands listed:\n{text}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    for page in [
        "signer",
        "signer-tx-submit",
        "signer-dkg-start",
        "signer-hsm-rotate-kek",
    ] {
        let p = dir.path().join(format!("{page}.1"));
        let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(body.contains(".TH"), "{page}: not a man page");
        assert!(
            body.contains(&page.replace('-', "\\-")),
            "{page}: wrong name"
        );
    }
}

#[test]
fn every_reading_command_offers_json() {
    for cmd in [
        &["status"][..],
        &["token", "list"],
        &["audit", "verify"],
        &["audit", "verify-export"],
        &["dkg", "status"],
        &["aux-info", "status"],
        &["keys", "list"],
        &["keys", "addresses"],
        &["tx", "status"],
        &["policy", "check"],
        &["policy", "eval"],
        &["hsm", "check"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (ok, text) = run(&args);
        assert!(ok, "{cmd:?}: {text}");
        assert!(text.contains("--json"), "{cmd:?} has no --json:\n{text}");
    }
}
