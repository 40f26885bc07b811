//! Compliance report of an export bundle (`signer audit report`): offline, from the
//! bundle's records only. The bundle is verified first (the offline verifier of
//! `verify-export`); a bundle that does not verify is refused, naming its first
//! broken item, unless the caller allows it, and the report then says UNVERIFIED
//! on every page and in every file.
//!
//! Formats: one self-contained HTML file (inline CSS and SVG, no script, no
//! external resource, every bundle string escaped), or a directory of CSV files,
//! one per section (RFC 4180). Both are written next to their destination and
//! renamed into place once complete: nothing half-written is left behind.
//!
//! See `docs/AUDIT.md`, "Reports".

mod chart;
pub mod csv;
pub mod html;
pub mod model;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::bundle::{Line, MAX_LINE_BYTES};
use super::verify::{verify_bundle, VerifyOptions};
pub use model::{AuditReport, Collector, Verification};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One CSV file per section, in a directory.
    Csv,
    /// One self-contained HTML file.
    Html,
}

impl Format {
    /// The default destination next to `bundle`: `june.jsonl` gives
    /// `june.report.html` or the directory `june.report`.
    pub fn default_out(self, bundle: &Path) -> PathBuf {
        let stem = bundle
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".to_owned());
        let name = match self {
            Format::Html => format!("{stem}.report.html"),
            Format::Csv => format!("{stem}.report"),
        };
        bundle.with_file_name(name)
    }
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Output format.
    pub format: Format,
    /// Destination (HTML: a file; CSV: a directory that does not exist or is
    /// empty). `None`: [`Format::default_out`].
    pub out: Option<PathBuf>,
    /// Write a report (marked UNVERIFIED) even if the bundle does not verify.
    pub unverified: bool,
    /// Options of the verification.
    pub verify: VerifyOptions,
}

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The bundle cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bundle does not verify and `--unverified` was not given.
    #[error(
        "the bundle does not verify: INVALID: {first}{more}; no report written \
         (signer audit verify-export lists every problem; --unverified writes a report \
         marked UNVERIFIED)",
        more = match problems { 0 | 1 => String::new(), n => format!(" (and {} more problems)", n - 1) }
    )]
    Invalid {
        /// The first broken item.
        first: String,
        /// Problems in all.
        problems: usize,
    },
    /// The bundle has no header line.
    #[error("{path} is not an audit bundle: it has no header line")]
    NoHeader {
        /// The bundle.
        path: PathBuf,
    },
    /// The bundle changed between its verification and the report's reading.
    #[error("{path} changed while the report was being made (its manifest no longer matches); no report written")]
    Changed {
        /// The bundle.
        path: PathBuf,
    },
    /// The CSV destination exists and holds files.
    #[error("{path} exists and is not an empty directory: a CSV report is a directory of files, written only to a new or empty one")]
    OutNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// Writing the report failed (nothing was left at the destination).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What [`generate`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The file (HTML) or directory (CSV).
    pub path: PathBuf,
    /// The CSV files written (empty for HTML).
    pub files: Vec<&'static str>,
    /// The report.
    pub report: AuditReport,
}

/// Verifies `bundle`, builds its report and writes it (see the module
/// documentation).
pub fn generate(bundle: &Path, opts: &ReportOptions) -> Result<Written, ReportError> {
    let read_err = |source| ReportError::Read {
        path: bundle.to_owned(),
        source,
    };
    let verified = verify_bundle(
        || std::fs::File::open(bundle).map(|f| BufReader::with_capacity(256 * 1024, f)),
        &opts.verify,
    )
    .map_err(read_err)?;
    let verification = if verified.is_valid() {
        Verification::Valid {
            checkpoints: verified.checkpoints_verified,
            notes: verified.notes.clone(),
        }
    } else {
        let first = verified
            .first_problem()
            .map(ToString::to_string)
            .unwrap_or_else(|| "the bundle does not verify".to_owned());
        if !opts.unverified {
            return Err(ReportError::Invalid {
                first,
                problems: verified.problems.len(),
            });
        }
        Verification::Unverified {
            first_problem: first,
            problems: verified.problems.len(),
        }
    };
    let file = std::fs::File::open(bundle).map_err(read_err)?;
    let (report, consistent) =
        collect(BufReader::with_capacity(256 * 1024, file), verification).map_err(read_err)?;
    let Some(report) = report else {
        return Err(ReportError::NoHeader {
            path: bundle.to_owned(),
        });
    };
    // A valid bundle read again must be the one verified: same id, same manifest.
    if report.verification.is_valid()
        && (!consistent || verified.bundle_id != Some(report.header.bundle_id))
    {
        return Err(ReportError::Changed {
            path: bundle.to_owned(),
        });
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| opts.format.default_out(bundle));
    let files = match opts.format {
        Format::Html => {
            write_file(&out, html::render(&report).as_bytes())?;
            Vec::new()
        }
        Format::Csv => {
            let files = csv::render(&report);
            write_dir(&out, &files)?;
            files.iter().map(|f| f.name).collect()
        }
    };
    Ok(Written {
        path: out,
        files,
        report,
    })
}

/// Reads one line of at most [`MAX_LINE_BYTES`] into `buf`; `Ok(false)` at the end.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
    let n = std::io::Read::take(&mut *r, limit).read_until(b'\n', buf)?;
    if n > MAX_LINE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line is longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    Ok(n > 0)
}

/// Builds the report from the bundle's lines. Also says whether the lines before
/// the manifest hash to the manifest's digest (the bundle is the one verified).
pub fn collect(
    mut r: impl BufRead,
    verification: Verification,
) -> std::io::Result<(Option<AuditReport>, bool)> {
    let mut c = Collector::new();
    let mut hasher = Sha256::new();
    let mut manifest_digest = None;
    let mut buf = Vec::new();
    while read_line(&mut r, &mut buf)? {
        match serde_json::from_slice::<Line>(&buf) {
            Ok(Line::Manifest(m)) => {
                manifest_digest.get_or_insert(m.sha256);
            }
            Ok(line) => {
                if manifest_digest.is_none() {
                    hasher.update(&buf);
                }
                c.push(line);
            }
            Err(_) => {
                hasher.update(&buf);
                c.unreadable();
            }
        }
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let consistent = manifest_digest == Some(digest);
    Ok((c.finish(verification), consistent))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it to `path`.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let tmp = temp_sibling(path);
    let err = |source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    sync_parent(path);
    Ok(())
}

/// Writes every file into a temporary directory next to `dir`, then renames it to
/// `dir` (which must not exist or be empty).
fn write_dir(dir: &Path, files: &[csv::CsvFile]) -> Result<(), ReportError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ReportError::OutNotEmpty {
                    path: dir.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(ReportError::OutNotEmpty {
                path: dir.to_owned(),
            })
        }
        Err(e) => {
            return Err(ReportError::Write {
                path: dir.to_owned(),
                source: e,
            })
        }
    }
    let tmp = temp_sibling(dir);
    let res = (|| {
        std::fs::create_dir(&tmp)?;
        for f in files {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp.join(f.name))?;
            file.write_all(f.content.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        // Replaces an empty directory; fails on a non-empty one.
        std::fs::rename(&tmp, dir)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ReportError::Write {
            path: dir.to_owned(),
            source: e,
        });
    }
    sync_parent(dir);
    Ok(())
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_owned());
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Makes the rename durable (best effort: not every file system allows it).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

/// A time as the report shows it: `2025-06-01 12:00:01Z`.
pub fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// [`ts`] or nothing.
pub fn opt_ts(t: Option<DateTime<Utc>>) -> String {
    t.map(ts).unwrap_or_default()
}

/// Satoshis with thousands separated by no-break spaces: `1 250 000`.
pub fn sats(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() * 2);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{a0}');
        }
        out.push(ch);
    }
    out
}

/// The limits of a policy's scopes as one line of text.
pub fn limits_text(scopes: &[model::ScopeLimits]) -> String {
    scopes
        .iter()
        .map(|s| {
            let mut parts = Vec::new();
            if let Some(m) = s.max_per_tx_sats {
                parts.push(format!("max per tx {m}"));
            }
            for v in &s.velocity {
                parts.push(format!(
                    "at most {} per {}",
                    v.max_sats,
                    chart::window(v.window_seconds)
                ));
            }
            for (above, required) in &s.approvals {
                parts.push(match above {
                    Some(a) => format!("{required} approval(s) above {a}"),
                    None => format!("{required} approval(s)"),
                });
            }
            if parts.is_empty() {
                parts.push("no limits".to_owned());
            }
            format!("{} ({}): {}", s.key_id, s.network, parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// HTML-escapes a string when displayed (`&`, `<`, `>`, `"`, `'`): safe in text and
/// in double- or single-quoted attribute values, in HTML and SVG.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}
