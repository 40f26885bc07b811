//! `signer-hwi`: a Bitcoin Core external signer (`bitcoind -signer=signer-hwi`)
//! in front of the cluster.
//!
//! Bitcoin Core runs the signer with HWI's command-line conventions
//! (`src/external_signer.cpp`) and reads the first line of its standard output as
//! JSON. Every completed cluster key is one device whose fingerprint is the master
//! fingerprint of the key's descriptors:
//!
//! * `enumerate`: `[{"type", "model", "label", "path", "fingerprint", ...}]`, one
//!   per key (or only the key chosen by `--key`/`key`; Core wants exactly one);
//! * `getdescriptors --account 0`: `{"receive": [...], "internal": [...]}`, the key's
//!   `wpkh([fp]xpub/0/*)#…`/`tr(...)` descriptors;
//! * `signtx` (from standard input with `--stdin`): submits the PSBT as an operator,
//!   waits for policy, votes and threshold signing, answers `{"psbt": ...}`;
//! * `displayaddress --desc DESC`: checks DESC's address against the cluster's own
//!   derivation, answers `{"address": ...}`.
//!
//! Failures answer `{"error": "...", "code": N}` (HWI codes, see [`error`]) with
//! exit status 0, so that Core reads and reports `error`; `enumerate` wraps its
//! error in the array, as HWI does. Configuration: [`config`]; see docs/HWI.md.

pub mod api;
pub mod args;
pub mod commands;
pub mod config;
pub mod error;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use self::api::ClusterApi;
use self::args::{Args, Command, Parsed};
use self::commands::Options;
use self::config::HwiConfig;
pub use self::error::HwiError;

/// Exit status of command-line misuse (as HWI's argument parser).
const EXIT_USAGE: u8 = 2;

/// The process: arguments from `argv` (without the program name), `--stdin` words
/// from `stdin`, variables from `env`; the answer (one JSON line) on `out`,
/// diagnostics on `err`.
pub fn main_with(
    argv: Vec<OsString>,
    stdin: impl Read,
    env: impl Fn(&str) -> Option<String>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> ExitCode {
    let args = match args::parse(argv, stdin) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Info(text)) => {
            let _ = write!(out, "{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = writeln!(err, "{e}");
            answer(out, &e.to_json());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let enumerate = args.command == Some(Command::Enumerate);
    let result = run(&args, &env);
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "signer-hwi error: {e}");
            if enumerate {
                Value::Array(vec![e.to_json()])
            } else {
                e.to_json()
            }
        }
    };
    answer(out, &value);
    ExitCode::SUCCESS
}

/// `main_with` on the process's own arguments, streams and environment.
pub fn main() -> ExitCode {
    main_with(
        std::env::args_os().skip(1).collect(),
        std::io::stdin().lock(),
        |k| std::env::var(k).ok(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

fn answer(out: &mut impl Write, v: &Value) {
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Loads the configuration, connects and runs the command.
fn run(args: &Args, env: &impl Fn(&str) -> Option<String>) -> Result<Value, HwiError> {
    let command = match &args.command {
        Some(Command::Other(words)) => {
            let name = words.first().map(String::as_str).unwrap_or("this command");
            return Err(HwiError::NotImplemented(
                name.chars().take(64).collect::<String>(),
            ));
        }
        Some(c) => c.clone(),
        None => return Err(HwiError::Usage("a command is required".to_owned())),
    };
    let file = args.config.clone().or_else(|| {
        env(config::CONFIG_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let cfg = HwiConfig::load(file.as_deref(), env)?;
    let opts = Options {
        key: args.key.clone().or(cfg.key.clone()),
        timeout: match args.timeout_secs {
            Some(0) => {
                return Err(HwiError::BadArgument(
                    "--timeout-secs must be at least 1".into(),
                ))
            }
            Some(s) => Duration::from_secs(s),
            None => cfg.timeout,
        },
        poll_interval: cfg.poll_interval,
    };
    let client =
        crate::cli::client::ApiClient::from_url(&cfg.api_url, &cfg.ca_cert, &cfg.token_file)
            .map_err(|e| HwiError::Config(format!("{e:#}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HwiError::Config(format!("cannot start the runtime: {e}")))?;
    rt.block_on(execute(&client, args, &command, &opts))
}

/// Runs `command` against `api`.
pub async fn execute(
    api: &impl ClusterApi,
    args: &Args,
    command: &Command,
    opts: &Options,
) -> Result<Value, HwiError> {
    if *command == Command::Enumerate {
        return commands::enumerate(api, opts).await;
    }
    let dev = commands::device(
        api,
        opts,
        args.fingerprint.as_deref(),
        args.chain.as_deref(),
    )
    .await?;
    match command {
        Command::Getdescriptors { account } => commands::getdescriptors(&dev, *account),
        Command::Displayaddress { desc } => commands::displayaddress(api, &dev, desc).await,
        Command::Signtx { psbt } => commands::signtx(api, &dev, psbt, opts).await,
        Command::Enumerate => commands::enumerate(api, opts).await,
        Command::Other(w) => Err(HwiError::NotImplemented(w.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(argv: &[&str], stdin: &str, env: &[(&str, &str)]) -> (u8, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let code = main_with(
            argv.iter().map(OsString::from).collect(),
            stdin.as_bytes(),
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &mut out,
            &mut err,
        );
        let code = if code == ExitCode::SUCCESS {
            0
        } else {
            EXIT_USAGE
        };
        (
            code,
            String::from_utf8(out).expect("utf-8"),
            String::from_utf8(err).expect("utf-8"),
        )
    }

    #[test]
    fn answers_are_one_json_line_and_errors_exit_zero_for_core_to_read() {
        let (code, out, _) = call(&["--fingerprint", "0a1b2c3d", "signmessage", "hi"], "", &[]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["code"], -8, "{v}");

        // No configuration: enumerate answers an array holding the error (Core then
        // reports "'signer-hwi' error: ..."), other commands an object.
        let (code, out, err) = call(&["enumerate"], "", &[]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v[0]["code"], -3, "{v}");
        assert!(
            v[0]["error"].as_str().expect("error").contains("api_url"),
            "{v}"
        );
        assert!(err.contains("api_url"), "{err}");
        let (_, out, _) = call(
            &["--stdin", "--fingerprint", "0a1b2c3d", "--chain", "regtest"],
            "signtx cHNidP8BAA==",
            &[],
        );
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert!(v.is_object() && v["error"].is_string(), "{v}");
    }

    #[test]
    fn misuse_exits_two_with_a_json_error_and_help_exits_zero() {
        let (code, out, err) = call(&["--bogus"], "", &[]);
        assert_eq!(code, EXIT_USAGE);
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["code"], -2, "{v}");
        assert!(!err.is_empty());
        let (code, out, _) = call(&["--help"], "", &[]);
        assert_eq!(code, 0);
        assert!(out.contains("signtx"), "{out}");
    }

    #[test]
    fn a_missing_config_file_is_a_configuration_error() {
        let (code, out, _) = call(
            &["--fingerprint", "0a1b2c3d", "getdescriptors"],
            "",
            &[(config::CONFIG_ENV, "/nonexistent/hwi.toml")],
        );
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["code"], -3, "{v}");
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("/nonexistent/hwi.toml"),
            "{v}"
        );
    }
}
