//! `signer audit export` (a bundle through a node's API), `signer audit
//! verify-export` and `signer audit report` (both offline: no network, no
//! database). See `docs/AUDIT.md`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::audit::bundle::Line;
use crate::audit::report::{generate, Format, ReportOptions, Verification};
use crate::audit::verify::{verify_bundle, Report, VerifyOptions};
use crate::cli::client::ApiOpts;

/// Exit status of `verify-export` for a bundle that does not verify.
pub const EXIT_INVALID: u8 = 1;
/// Exit status of `verify-export` when the bundle cannot be read.
pub const EXIT_UNREADABLE: u8 = 2;

fn query_time(name: &str, v: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(v)
        .map_err(|e| anyhow::anyhow!("--{name} {v:?} is not an RFC 3339 time: {e}"))?;
    Ok(Some(
        t.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    ))
}

/// `signer audit export`: streams the bundle to `out` (written to `out.partial`,
/// renamed once complete); fails when the node's export ended without a manifest.
pub async fn export(
    api: &ApiOpts,
    from: Option<&str>,
    to: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(f) = query_time("from", from)? {
        query.push(format!("from={}", urlencode(&f)));
    }
    if let Some(t) = query_time("to", to)? {
        query.push(format!("to={}", urlencode(&t)));
    }
    let path = if query.is_empty() {
        "/api/v1/audit/export".to_owned()
    } else {
        format!("/api/v1/audit/export?{}", query.join("&"))
    };
    let client = api.connect().await?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = std::fs::File::create(&partial)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let bytes = client.download(&path, &mut w).await?;
    w.flush()?;
    drop(w);
    match last_line(&partial)? {
        Some(Line::Manifest(m)) => {
            std::fs::rename(&partial, out)?;
            let rows: u64 = m.rows.values().sum();
            println!(
                "bundle {} from {}: {} records of {} nodes, {} checkpoints, {bytes} bytes in {}",
                m.bundle_id,
                m.exporter,
                rows,
                m.rows.len(),
                m.checkpoints,
                out.display()
            );
            println!(
                "verify it offline: signer audit verify-export {}",
                out.display()
            );
            Ok(())
        }
        Some(Line::Error(e)) => anyhow::bail!(
            "{} stopped the export: {} (partial bundle kept in {})",
            client.label(),
            e.message,
            partial.display()
        ),
        _ => anyhow::bail!(
            "the export from {} ended without a manifest (partial bundle kept in {})",
            client.label(),
            partial.display()
        ),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The last line of a bundle file, parsed.
fn last_line(path: &Path) -> anyhow::Result<Option<Line>> {
    let f = std::fs::File::open(path)?;
    let mut last: Option<String> = None;
    for line in BufReader::new(f).lines() {
        last = Some(line?);
    }
    Ok(last.and_then(|l| serde_json::from_str(&l).ok()))
}

/// `signer audit verify-export`: prints the verdict; the exit status to use.
pub fn verify_export(
    bundle: &Path,
    min_signatures: Option<u16>,
    ca_cert: Option<&Path>,
    json: bool,
) -> u8 {
    let expected_ca_pem = match ca_cert.map(std::fs::read_to_string).transpose() {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("error: cannot read the CA certificate: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let opts = VerifyOptions {
        min_signatures,
        expected_ca_pem,
    };
    let report = match verify_bundle(
        || std::fs::File::open(bundle).map(|f| BufReader::with_capacity(256 * 1024, f)),
        &opts,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", bundle.display());
            return EXIT_UNREADABLE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&serde_json::json!({
            "valid": report.is_valid(),
            "report": report,
        })) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print_report(bundle, &report);
    }
    if report.is_valid() {
        0
    } else {
        EXIT_INVALID
    }
}

fn print_report(bundle: &Path, r: &Report) {
    let id = r.bundle_id.map(|i| i.to_string()).unwrap_or_default();
    let exporter = r.exporter.clone().unwrap_or_default();
    let range = match (r.from, r.to) {
        (Some(f), Some(t)) => format!("{} .. {}", f.to_rfc3339(), t.to_rfc3339()),
        _ => String::new(),
    };
    if let Some(first) = r.first_problem() {
        println!("INVALID: {first}");
    } else {
        println!(
            "VALID: bundle {id} of {} (exported by {exporter}, {range})",
            bundle.display()
        );
    }
    for (node, s) in &r.nodes {
        let span = match (s.first_seq, s.last_seq) {
            (Some(a), Some(b)) => format!("records {a}..{b}"),
            _ => "no records".to_owned(),
        };
        let covered = s.covered_to.map_or("no checkpointed head".to_owned(), |c| {
            format!("checkpointed up to seq {c}")
        });
        println!(
            "  {node}: {span} ({} checked), {} signed heads matched, {covered}",
            s.records, s.heads_matched
        );
    }
    println!(
        "  {} checkpoints verified, {} policy versions, {} lines; cluster CA SHA-256 {}",
        r.checkpoints_verified,
        r.policies,
        r.lines,
        r.ca_sha256.as_deref().unwrap_or("-")
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
    if r.problems.len() > 1 {
        println!("  all problems ({}):", r.problems.len());
        for p in r.problems.iter().take(50) {
            println!("    {p}");
        }
        if r.problems.len() > 50 {
            println!("    ... and {} more", r.problems.len() - 50);
        }
    }
}

/// `--format` of `signer audit report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML file (inline CSS and SVG chart, no script).
    Html,
    /// A directory of CSV files (RFC 4180), one per section.
    Csv,
}

/// Arguments of `signer audit report`.
#[derive(Debug)]
pub struct ReportArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// Format.
    pub format: ReportFormat,
    /// Destination.
    pub out: Option<PathBuf>,
    /// Write a report of a bundle that does not verify, marked UNVERIFIED.
    pub unverified: bool,
    /// The auditor's cluster CA.
    pub ca_cert: Option<PathBuf>,
    /// Fewest co-signatures per checkpoint.
    pub min_signatures: Option<u16>,
}

/// `signer audit report`: verifies the bundle, writes the report (exit 1 naming
/// the first broken item when the bundle does not verify, unless `--unverified`).
pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let expected_ca_pem = args
        .ca_cert
        .as_deref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read the CA certificate {}: {e}", p.display()))
        })
        .transpose()?;
    let opts = ReportOptions {
        format: match args.format {
            ReportFormat::Html => Format::Html,
            ReportFormat::Csv => Format::Csv,
        },
        out: args.out,
        unverified: args.unverified,
        verify: VerifyOptions {
            min_signatures: args.min_signatures,
            expected_ca_pem,
        },
    };
    let written = generate(&args.bundle, &opts)?;
    let r = &written.report;
    if let Verification::Unverified {
        first_problem,
        problems,
    } = &r.verification
    {
        eprintln!(
            "WARNING: the bundle does not verify ({problems} problem(s), first: {first_problem}); \
             the report is marked UNVERIFIED"
        );
    }
    let what = if written.files.is_empty() {
        written.path.display().to_string()
    } else {
        format!("{} ({})", written.path.display(), written.files.join(", "))
    };
    println!(
        "{} report of bundle {} ({}): {} transactions, {} key ceremonies, {} token changes, \
         {} policy versions, {} violations; written to {what}",
        match opts.format {
            Format::Html => "HTML",
            Format::Csv => "CSV",
        },
        r.header.bundle_id,
        if r.verification.is_valid() {
            "verified"
        } else {
            "UNVERIFIED"
        },
        r.transactions.len(),
        r.ceremonies.len(),
        r.tokens.len(),
        r.policies.len(),
        r.violations.len(),
    );
    Ok(())
}
