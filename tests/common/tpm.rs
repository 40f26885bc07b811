//! swtpm for the cluster tests that run a node on a TPM.
#![allow(clippy::unwrap_used)] // test harness: a failed step must fail the test loudly

use std::process::Command;

/// A throwaway swtpm started with `softhsm/start-swtpm.sh`, killed when dropped.
/// Without swtpm the script fails, and so does the test.
#[derive(Debug)]
pub struct Swtpm {
    /// TCTI string of this swtpm.
    pub tcti: String,
    pid: i32,
    _dir: tempfile::TempDir,
}

impl Swtpm {
    /// Starts one; panics (failing the test) when swtpm is missing.
    pub fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../softhsm/start-swtpm.sh");
        // stdout to a file: the backgrounded swtpm keeps the script's stdout open.
        let out_path = dir.path().join("start.out");
        let status = Command::new("bash")
            .arg(&script)
            .arg(dir.path().join("state"))
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(dir.path().join("start.err")).unwrap())
            .status()
            .unwrap();
        let err = std::fs::read_to_string(dir.path().join("start.err")).unwrap_or_default();
        assert!(
            status.success(),
            "softhsm/start-swtpm.sh failed (swtpm installed? apt-get install swtpm): {err}"
        );
        let out = std::fs::read_to_string(&out_path).unwrap();
        let mut lines = out.lines();
        let tcti = lines.next().unwrap().to_owned();
        let pid = lines.next().unwrap().trim().parse().unwrap();
        Swtpm {
            tcti,
            pid,
            _dir: dir,
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The node's config with its SoftHSM `[custody]` section replaced by `custody`.
pub fn with_custody(config: &str, custody: &str) -> String {
    let mut out = String::new();
    let mut in_custody = false;
    for line in config.lines() {
        if line.starts_with('[') {
            in_custody = line.trim() == "[custody]";
        }
        if in_custody {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(custody);
    out
}

/// NV index of the presignature watermark's TPM counter in the tests.
pub const ANCHOR_INDEX: &str = "0x01800100";

/// Anchors node `i`'s presignature watermark in the TPM counter [`ANCHOR_INDEX`]
/// of `tpm` (its keys stay in SoftHSM): `[presign] tpm_counter_index` and
/// `tpm_counter_tcti` added to its configuration, `signer hsm init` defines the
/// counter, and the node is restarted.
pub async fn anchor_watermark_in_tpm(c: &crate::Cluster, i: usize, tpm: &Swtpm) {
    let path = c.node(i).config.clone();
    let config = std::fs::read_to_string(&path).unwrap().replace(
        "[presign]\nenabled = false\n",
        &format!(
            "[presign]\nenabled = false\ntpm_counter_index = {ANCHOR_INDEX}\n\
             tpm_counter_tcti = \"{}\"\n",
            tpm.tcti
        ),
    );
    assert!(config.contains("tpm_counter_index"), "no [presign] section");
    std::fs::write(&path, config).unwrap();
    let (ok, text) = crate::signer_with_config(&["hsm", "init"], &path, &[]);
    assert!(ok, "signer hsm init: {text}");
    assert!(
        text.contains("presignature watermark anchor: tpm counter 0x01800100"),
        "{text}"
    );
    // `hsm check --json` reports the anchor as one of its steps.
    let (ok, json) = crate::signer_with_config(&["hsm", "check", "--json"], &path, &[]);
    assert!(ok, "signer hsm check --json: {json}");
    // stdout (the JSON document) then stderr.
    let end = json.rfind("\n}").map_or(json.len(), |e| e + 2);
    let v: serde_json::Value = serde_json::from_str(&json[..end])
        .unwrap_or_else(|e| panic!("hsm check --json: {e}: {json}"));
    assert_eq!(v["ok"], true, "{v}");
    let step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "presignature watermark anchor")
        .unwrap_or_else(|| panic!("no anchor step: {v}"));
    assert_eq!(step["ok"], true, "{step}");
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .starts_with("tpm counter 0x01800100 at "),
        "{step}"
    );
    c.kill_node(i);
    c.restart_node(i);
}
