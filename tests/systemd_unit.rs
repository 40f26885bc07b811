//! The shipped systemd unit (`systemd/signer.service`, issue 16, finding 12):
//! `systemd-analyze verify` accepts it, `systemd-analyze security --offline=yes`
//! scores its exposure at 1.5 or less, it has the directives the issue asks for
//! (`DevicePolicy=closed`, `IPAddressDeny=any` with an `IPAddressAllow=` list), and
//! the hardening keeps what the node needs to run (TPM device, mlock, setrlimit,
//! network, credentials, state directory), and the HSM PIN and the database URL
//! arrive as encrypted credentials (`LoadCredentialEncrypted=`, finding 6) that the
//! configuration in docs/CONFIGURATION.md reads from the credentials directory.
//! Issue 19: `Type=notify` with `NotifyAccess=main`, a `WatchdogSec=`, no start
//! timeout, and the journald log format.
//!
//! Needs `systemd-analyze` (Debian: package `systemd`); without it the tests fail,
//! they do not skip. No systemd instance is needed: both commands read the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Highest accepted overall exposure, in tenths (`systemd-analyze` prints one
/// decimal and its `--threshold=` takes the same scale times ten).
const MAX_EXPOSURE_TENTHS: u32 = 15;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn unit_path() -> PathBuf {
    repo_root().join("systemd/signer.service")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `systemd-analyze` from PATH, else /usr/bin or /bin; panics (test failure) when
/// it is not installed, so a machine without it cannot pass silently.
fn systemd_analyze() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("systemd-analyze"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze not found (PATH, /usr/bin, /bin): install systemd \
                 (Debian/Ubuntu: apt-get install systemd) to check systemd/signer.service"
            )
        })
}

fn run(args: &[&str], unit: &Path) -> Output {
    let bin = systemd_analyze();
    Command::new(&bin)
        .args(args)
        .arg(unit)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()))
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Lines `Key=value` of the unit, comments and blank lines left out.
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// "1.5" -> 15. The overall exposure is printed with exactly one decimal.
fn tenths(s: &str) -> Option<u32> {
    let (int, frac) = s.split_once('.')?;
    if frac.len() != 1 {
        return None;
    }
    Some(int.parse::<u32>().ok()? * 10 + frac.parse::<u32>().ok()?)
}

/// The number in `→ Overall exposure level for signer.service: 1.5 OK 🙂`.
fn overall_exposure(stdout: &str) -> Option<(String, u32)> {
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let number = line.rsplit_once(": ")?.1.split_whitespace().next()?;
    Some((number.to_owned(), tenths(number)?))
}

#[test]
fn the_shipped_unit_verifies_and_scores_at_most_1_5() {
    let unit = unit_path();
    let text = read(&unit);

    // 1. `verify` on the shipped file. On a build or CI host the node is not
    // installed, so verify reports "Command /usr/bin/signer is not executable";
    // that is the only complaint accepted here.
    let shipped = run(&["verify", "--man=no"], &unit);
    let stderr = String::from_utf8_lossy(&shipped.stderr);
    let other: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.contains("/usr/bin/signer") && l.contains("is not executable")))
        .collect();
    assert!(
        other.is_empty(),
        "systemd-analyze verify {}: {other:?}\n{}",
        unit.display(),
        describe(&shipped)
    );

    // 2. `verify` on a copy whose ExecStart names an existing binary, so that the
    // missing /usr/bin/signer cannot hide anything else: it must pass cleanly.
    // The copy keeps the file name (the unit name comes from it); everything but
    // the program path of ExecStart= is unchanged.
    let existing = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("/bin/true or /usr/bin/true exists");
    assert!(
        text.contains("\nExecStart=/usr/bin/signer "),
        "ExecStart= of {} no longer starts /usr/bin/signer; update this test",
        unit.display()
    );
    let copy_text = text.replace(
        "\nExecStart=/usr/bin/signer ",
        &format!("\nExecStart={existing} "),
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let copy = dir.path().join("signer.service");
    std::fs::write(&copy, copy_text).expect("writing the unit copy");
    let verified = run(&["verify", "--man=no"], &copy);
    assert!(
        verified.status.success() && String::from_utf8_lossy(&verified.stderr).trim().is_empty(),
        "systemd-analyze verify (ExecStart={existing}) reports problems:\n{}",
        describe(&verified)
    );

    // 3. Offline security review of the shipped file. `--threshold=15` makes
    // systemd-analyze itself exit non-zero above 1.5; the printed number is also
    // parsed and checked, so the message says what the score is.
    let threshold = format!("--threshold={MAX_EXPOSURE_TENTHS}");
    let security = run(
        &["security", "--offline=yes", &threshold, "--no-pager"],
        &unit,
    );
    let stdout = String::from_utf8_lossy(&security.stdout);
    let (printed, score) = overall_exposure(&stdout).unwrap_or_else(|| {
        panic!(
            "no \"Overall exposure level\" line in the output:\n{}",
            describe(&security)
        )
    });
    let exposures: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert!(
        score <= MAX_EXPOSURE_TENTHS,
        "exposure of {} is {printed}, above 1.5; settings that still cost:\n{}",
        unit.display(),
        exposures.join("\n")
    );
    assert!(
        security.status.success(),
        "systemd-analyze security {threshold} failed although it printed {printed}:\n{}",
        describe(&security)
    );

    // 4. The directives issue 16 (finding 12) names.
    let d = directives(&text);
    assert_eq!(
        values(&d, "DevicePolicy"),
        ["closed"],
        "DevicePolicy=closed"
    );
    assert_eq!(values(&d, "IPAddressDeny"), ["any"], "IPAddressDeny=any");
    let allow = values(&d, "IPAddressAllow");
    assert!(
        !allow.is_empty() && allow.iter().all(|v| !v.is_empty()),
        "IPAddressAllow= with a non-empty list: {allow:?}"
    );
    assert!(
        allow
            .iter()
            .any(|v| v.split_whitespace().any(|a| a == "localhost")),
        "IPAddressAllow= includes localhost: {allow:?}"
    );
}

/// What the hardening must not take away (the reasons are in the unit's comments).
#[test]
fn the_shipped_unit_keeps_what_the_node_needs_to_run() {
    let unit = unit_path();
    let d = directives(&read(&unit));
    let has = |key: &str, value: &str| values(&d, key).contains(&value);

    // TPM custody backend: the kernel resource manager, group tss, and the group
    // exists on every host (sysusers), else the unit would fail with 216/GROUP.
    assert!(
        has("DeviceAllow", "/dev/tpmrm0 rw"),
        "DeviceAllow=/dev/tpmrm0 rw"
    );
    assert!(
        values(&d, "SupplementaryGroups")
            .iter()
            .any(|v| v.split_whitespace().any(|g| g == "tss")),
        "SupplementaryGroups=tss"
    );
    let sysusers = read(&repo_root().join("systemd/sysusers.d/signer.conf"));
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["g", "tss"])),
        "systemd/sysusers.d/signer.conf creates the tss group (`g tss -`)"
    );
    assert!(
        !has("PrivateDevices", "true") && !has("PrivateDevices", "yes"),
        "PrivateDevices=true would hide /dev/tpmrm0"
    );

    // mlockall with RLIMIT_MEMLOCK unlimited, no core dumps.
    assert!(has("LimitMEMLOCK", "infinity"), "LimitMEMLOCK=infinity");
    assert!(has("LimitCORE", "0"), "LimitCORE=0");
    // setrlimit/prlimit64 (RLIMIT_CORE, RLIMIT_MEMLOCK) are in @resources, mlockall
    // in @memlock, prctl(PR_SET_DUMPABLE) in @system-service: none may be denied.
    for filter in values(&d, "SystemCallFilter") {
        if let Some(denied) = filter.strip_prefix('~') {
            for group in ["@resources", "@memlock", "@process", "@system-service"] {
                assert!(
                    !denied.split_whitespace().any(|g| g == group),
                    "SystemCallFilter=~ denies {group}, which the node needs: {filter}"
                );
            }
        }
    }
    assert!(
        values(&d, "SystemCallFilter")
            .iter()
            .any(|v| v.split_whitespace().any(|g| g == "@memlock")),
        "SystemCallFilter= allows @memlock (mlockall)"
    );

    // Network (QUIC over UDP, HTTPS API, etcd, PostgreSQL) and sd_notify.
    assert!(
        !has("PrivateNetwork", "true") && !has("PrivateNetwork", "yes"),
        "PrivateNetwork would cut the node off"
    );
    let families = values(&d, "RestrictAddressFamilies").join(" ");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "RestrictAddressFamilies= keeps {family}: {families}"
        );
    }
    assert!(has("Type", "notify"), "Type=notify");

    // Credentials (encrypted: see the next test), config and state.
    assert!(
        has(
            "LoadCredentialEncrypted",
            "database-url:/etc/signer/credentials/database-url.cred"
        ),
        "LoadCredentialEncrypted=database-url"
    );
    assert!(
        has(
            "LoadCredentialEncrypted",
            "hsm-pin:/etc/signer/credentials/hsm-pin.cred"
        ),
        "LoadCredentialEncrypted=hsm-pin"
    );
    assert!(has("StateDirectory", "signer"), "StateDirectory=signer");
    assert!(has("ProtectSystem", "strict"), "ProtectSystem=strict");
    assert!(has("User", "signer"), "User=signer");
}

/// Issue 19: `Type=notify` with the main process as the only sender, a watchdog
/// the node pings (signer/src/node/notify.rs, tested in tests/notify.rs), no start
/// timeout that would restart a sealed node into retrying its PIN, and logs in the
/// journald format.
#[test]
fn the_shipped_unit_is_type_notify_with_a_watchdog_and_journald_logs() {
    let d = directives(&read(&unit_path()));
    assert_eq!(values(&d, "Type"), ["notify"], "Type=notify");
    assert_eq!(values(&d, "NotifyAccess"), ["main"], "NotifyAccess=main");
    let watchdog = values(&d, "WatchdogSec");
    assert_eq!(watchdog.len(), 1, "one WatchdogSec=: {watchdog:?}");
    let secs: u64 = watchdog[0]
        .strip_suffix('s')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("WatchdogSec= in whole seconds (\"30s\"): {watchdog:?}"));
    assert!(
        (10..=300).contains(&secs),
        "WatchdogSec={secs}s: the node pings every half period; keep it between 10 s and 5 min"
    );
    assert_eq!(
        values(&d, "TimeoutStartSec"),
        ["infinity"],
        "a sealed node never reports READY; a start timeout would restart it into \
         retrying a wrong PIN"
    );
    assert!(
        values(&d, "Environment").contains(&"SIGNER__LOG__FORMAT=journald"),
        "the unit selects the journald log format: {:?}",
        values(&d, "Environment")
    );
    assert_eq!(
        values(&d, "SyslogLevelPrefix"),
        ["yes"],
        "SyslogLevelPrefix=yes"
    );
    let families = values(&d, "RestrictAddressFamilies").join(" ");
    assert!(
        families.split_whitespace().any(|f| f == "AF_UNIX"),
        "sd_notify needs AF_UNIX: {families}"
    );
}

/// The `[custody]`/`[database]` settings of the TOML examples in
/// docs/CONFIGURATION.md that are not commented out: `(key, value)`, quotes removed.
fn documented_settings() -> Vec<(String, String)> {
    let doc = read(&repo_root().join("docs/CONFIGURATION.md"));
    let mut out = Vec::new();
    let mut in_toml = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            in_toml = line.trim() == "```toml";
            continue;
        }
        if !in_toml || line.trim_start().starts_with('#') {
            continue;
        }
        let line = line.split(" #").next().unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
        }
    }
    out
}

/// Issue 16, finding 6: the HSM PIN (or TPM storage-key auth) and the database URL
/// come in as encrypted credentials, the unit says how to make them, and the
/// documented node configuration reads exactly those credentials.
#[test]
fn secrets_arrive_as_encrypted_credentials_the_documented_config_reads() {
    let text = read(&unit_path());
    let d = directives(&text);

    // Encrypted, and only encrypted: no plain LoadCredential= / SetCredential= for
    // the secrets (a plaintext copy on disk is what the finding is about).
    let encrypted: Vec<(&str, &str)> = values(&d, "LoadCredentialEncrypted")
        .into_iter()
        .filter_map(|v| v.split_once(':'))
        .collect();
    for (name, path) in [
        ("hsm-pin", "/etc/signer/credentials/hsm-pin.cred"),
        ("database-url", "/etc/signer/credentials/database-url.cred"),
    ] {
        assert!(
            encrypted.contains(&(name, path)),
            "LoadCredentialEncrypted={name}:{path} missing: {encrypted:?}"
        );
        for plain in ["LoadCredential", "SetCredential", "SetCredentialEncrypted"] {
            assert!(
                values(&d, plain)
                    .iter()
                    .all(|v| v.split(':').next() != Some(name)),
                "{plain}= also provides {name}: {:?}",
                values(&d, plain)
            );
        }
        // The unit's comment says how to create each one, under its name.
        let how = format!("--name={name}");
        assert!(
            text.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .any(|l| l.contains(&how)),
            "no comment with `systemd-creds encrypt {how}`"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with('#') && l.contains("systemd-creds encrypt")),
        "no comment on creating the credentials with systemd-creds encrypt"
    );
    assert!(
        values(&d, "Environment").contains(&"SIGNER__DATABASE__URL_FILE=%d/database-url"),
        "the database URL is read from the credential: {:?}",
        values(&d, "Environment")
    );

    // The documented configuration reads these credentials: the PKCS#11 PIN and the
    // TPM storage-key auth by credential name, the database URL from the
    // credentials directory; no documented secret sits in an ordinary file.
    let settings = documented_settings();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let names: Vec<&str> = encrypted.iter().map(|(n, _)| *n).collect();
    let pins = get("pin_credential");
    assert!(
        !pins.is_empty(),
        "docs/CONFIGURATION.md shows no pin_credential"
    );
    for c in pins.iter().chain(get("key_auth_credential").iter()) {
        assert!(
            names.contains(c),
            "docs/CONFIGURATION.md reads credential {c:?}, the unit loads {names:?}"
        );
    }
    assert!(
        !get("key_auth_credential").is_empty(),
        "docs/CONFIGURATION.md shows the TPM backend without key_auth_credential"
    );
    assert_eq!(
        get("url_file"),
        ["/run/credentials/signer.service/database-url"],
        "docs/CONFIGURATION.md reads the database URL from the credentials directory"
    );
    for key in ["pin_file", "key_auth_file", "url"] {
        assert!(
            get(key).is_empty(),
            "docs/CONFIGURATION.md shows {key} = {:?} uncommented; secrets come from \
             the encrypted credentials",
            get(key)
        );
    }
}
