//! The command line of `signer-hwi`, in HWI's shape, as Bitcoin Core builds it:
//!
//! ```text
//! signer-hwi enumerate
//! signer-hwi --fingerprint FP --chain CHAIN getdescriptors --account 0
//! signer-hwi --fingerprint FP --chain CHAIN displayaddress --desc DESC
//! signer-hwi --stdin --fingerprint FP --chain CHAIN      (stdin: signtx PSBT)
//! ```
//!
//! With `--stdin`, as in HWI, every line of standard input (up to an empty line or
//! the end) is split like a shell would (quotes removed: older Core versions send
//! `signtx "PSBT"`, newer ones `signtx PSBT`) and appended to the arguments. The
//! input is read up to [`MAX_STDIN_BYTES`].

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use super::error::HwiError;

/// Largest standard input read with `--stdin` (a base64 PSBT; the nodes refuse
/// PSBTs over 4 MiB anyway).
pub const MAX_STDIN_BYTES: u64 = 8 * 1024 * 1024;

/// `signer-hwi`: a Bitcoin Core external signer (`bitcoind -signer=signer-hwi`) in
/// front of a threshold-signing cluster. Each completed cluster key is one
/// "device", named by the master fingerprint of its descriptors. Answers are one
/// line of JSON on standard output; failures are `{"error": ..., "code": ...}`.
#[derive(Debug, clap::Parser)]
#[command(name = "signer-hwi", version, disable_help_subcommand = true)]
pub struct Args {
    /// Master key fingerprint of the cluster key to use (8 hex digits, as listed by
    /// `enumerate`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Chain Bitcoin Core runs on: main, test, testnet4, signet or regtest. Must be
    /// the cluster's network (default: main, as in HWI).
    #[arg(long)]
    pub chain: Option<String>,
    /// Read more arguments from standard input (how Core sends `signtx PSBT`).
    #[arg(long)]
    pub stdin: bool,
    /// Configuration file (TOML; default: $SIGNER_HWI_CONFIG, else the environment
    /// only). See docs/HWI.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use only this cluster key: its key id, its fingerprint, or a key type
    /// (`ecdsa`, `taproot`: the newest key of that type). Overrides the
    /// configuration's `key`. Core accepts one signer per wallet, so give this when
    /// the cluster has several keys.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Longest wait for the cluster's votes and signature in `signtx`, in seconds
    /// (overrides the configuration's `timeout_secs`).
    #[arg(long, value_name = "SECS")]
    pub timeout_secs: Option<u64>,
    /// The command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// HWI commands Bitcoin Core uses.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// List the cluster's keys as signing devices (no --fingerprint needed).
    Enumerate,
    /// The key's receive and change descriptors: {"receive": [...], "internal": [...]}.
    Getdescriptors {
        /// BIP-44 account; a cluster key has one account, 0.
        #[arg(long, default_value_t = 0)]
        account: u32,
    },
    /// Check that the address of DESC is the cluster's own address for this key at
    /// that path; prints {"address": ...}.
    Displayaddress {
        /// Descriptor of one address (`wpkh([fp/0/5]02…)`, `tr([fp/1/3]…)`, or with the
        /// key's xpub at a fixed index).
        #[arg(long)]
        desc: String,
    },
    /// Submit the PSBT to the cluster as an operator, wait for policy, votes and
    /// threshold signing, print {"psbt": signed}.
    Signtx {
        /// The PSBT, base64.
        psbt: String,
    },
    /// Any other HWI command (answered as not implemented).
    #[command(external_subcommand)]
    Other(Vec<String>),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run a command.
    Run(Args),
    /// `--help` or `--version`: print this text and exit 0.
    Info(String),
}

/// Parses `argv` (without the program name); with `--stdin`, first appends the
/// words of `stdin`.
pub fn parse(argv: Vec<OsString>, stdin: impl Read) -> Result<Parsed, HwiError> {
    use clap::Parser as _;
    let mut argv = argv;
    if argv.iter().any(|a| a == "--stdin") {
        argv.extend(stdin_words(stdin)?.into_iter().map(OsString::from));
    }
    let full = std::iter::once(OsString::from("signer-hwi")).chain(argv);
    match Args::try_parse_from(full) {
        Ok(a) if a.command.is_none() => Err(HwiError::Usage(
            "signer-hwi: error: a command is required (enumerate, getdescriptors, \
             displayaddress, signtx)"
                .to_owned(),
        )),
        Ok(a) => Ok(Parsed::Run(a)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Ok(Parsed::Info(e.render().to_string()))
            }
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                Err(HwiError::Usage(format!(
                    "signer-hwi: {}",
                    first.trim_start_matches("error: ")
                )))
            }
        },
    }
}

/// The words of standard input: each line split like a shell would, up to the
/// first empty line or the end; at most [`MAX_STDIN_BYTES`] are read.
pub fn stdin_words(stdin: impl Read) -> Result<Vec<String>, HwiError> {
    let mut raw = Vec::new();
    stdin
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| HwiError::Usage(format!("cannot read standard input: {e}")))?;
    if raw.len() as u64 > MAX_STDIN_BYTES {
        return Err(HwiError::Usage(format!(
            "standard input is larger than {MAX_STDIN_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(raw)
        .map_err(|_| HwiError::Usage("standard input is not UTF-8 text".to_owned()))?;
    let mut words = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        words.extend(split_words(line)?);
    }
    Ok(words)
}

/// Splits a line into words as a POSIX shell would: whitespace separates,
/// single quotes keep everything, double quotes keep everything but `\"` and `\\`
/// escapes, a backslash outside quotes escapes the next character.
pub fn split_words(line: &str) -> Result<Vec<String>, HwiError> {
    let unterminated = || HwiError::Usage("unterminated quote on standard input".to_owned());
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(unterminated()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err(unterminated()),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(unterminated()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str], stdin: &str) -> Result<Args, HwiError> {
        let argv = argv.iter().map(OsString::from).collect();
        match parse(argv, stdin.as_bytes())? {
            Parsed::Run(a) => Ok(a),
            Parsed::Info(t) => panic!("unexpected help: {t}"),
        }
    }

    #[test]
    fn core_argument_shapes_parse() {
        let a = run(&["enumerate"], "").expect("enumerate");
        assert_eq!(a.command, Some(Command::Enumerate));
        let a = run(
            &[
                "--fingerprint",
                "0a1b2c3d",
                "--chain",
                "regtest",
                "getdescriptors",
                "--account",
                "0",
            ],
            "",
        )
        .expect("getdescriptors");
        assert_eq!(a.fingerprint.as_deref(), Some("0a1b2c3d"));
        assert_eq!(a.chain.as_deref(), Some("regtest"));
        assert_eq!(a.command, Some(Command::Getdescriptors { account: 0 }));
        let a = run(
            &[
                "--fingerprint=0a1b2c3d",
                "--chain=regtest",
                "displayaddress",
                "--desc",
                "wpkh([0a1b2c3d/0/0]02aa)#x",
            ],
            "",
        )
        .expect("displayaddress");
        assert_eq!(
            a.command,
            Some(Command::Displayaddress {
                desc: "wpkh([0a1b2c3d/0/0]02aa)#x".into()
            })
        );
    }

    #[test]
    fn signtx_comes_from_stdin_quoted_or_not() {
        for stdin in [
            "signtx cHNidP8BAA==",
            "signtx \"cHNidP8BAA==\"\n",
            "signtx 'cHNidP8BAA=='\n\nignored after the empty line",
        ] {
            let a = run(
                &["--stdin", "--fingerprint", "0a1b2c3d", "--chain", "regtest"],
                stdin,
            )
            .expect("signtx");
            assert!(a.stdin);
            assert_eq!(
                a.command,
                Some(Command::Signtx {
                    psbt: "cHNidP8BAA==".into()
                }),
                "{stdin:?}"
            );
        }
    }

    #[test]
    fn stdin_is_read_only_with_the_flag_and_is_bounded() {
        let e = run(&["--fingerprint", "0a1b2c3d"], "signtx cHNidP8BAA==")
            .expect_err("no command without --stdin");
        assert_eq!(e.code(), -2);
        let big = "a".repeat(MAX_STDIN_BYTES as usize + 1);
        let e = stdin_words(big.as_bytes()).expect_err("too large");
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = split_words("signtx \"abc").expect_err("unterminated");
        assert_eq!(e.code(), -2);
    }

    #[test]
    fn unknown_commands_are_kept_for_a_not_implemented_answer_and_bad_flags_are_usage_errors() {
        let a = run(
            &["--fingerprint", "0a1b2c3d", "signmessage", "hi", "m/0"],
            "",
        )
        .expect("external subcommand");
        assert_eq!(
            a.command,
            Some(Command::Other(vec![
                "signmessage".into(),
                "hi".into(),
                "m/0".into()
            ]))
        );
        let e = run(&["--no-such-flag", "enumerate"], "").expect_err("bad flag");
        assert_eq!(e.code(), -2);
        assert!(e.to_string().starts_with("signer-hwi: "), "{e}");
        let e = run(&["displayaddress"], "").expect_err("missing --desc");
        assert_eq!(e.code(), -2);
    }
}
