//! `signer policy check|eval`: load a policy file and evaluate a transaction view.

use std::path::Path;

use policy::report::{DecisionReport, PolicyErrorReport, PolicySummary};
use policy::{Decision, EvalRequest, Policy};

/// Largest policy or request file read.
const MAX_FILE: u64 = 1024 * 1024;

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_FILE,
        "{} is larger than {MAX_FILE} bytes",
        path.display()
    );
    Ok(std::fs::read(path)?)
}

fn load(path: &Path, json: bool) -> anyhow::Result<Policy> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    Policy::from_toml_str(&text, &path.display().to_string()).map_err(|e| {
        if json {
            println!("{}", PolicyErrorReport::new(&e).to_json());
        }
        anyhow::anyhow!("{e}")
    })
}

/// `signer policy check FILE`.
pub fn check(file: &Path, json: bool) -> anyhow::Result<()> {
    let policy = load(file, json)?;
    let summary = PolicySummary::new(&policy);
    println!(
        "{}",
        if json {
            summary.to_json()
        } else {
            summary.to_text()
        }
    );
    Ok(())
}

/// `signer policy eval FILE REQUEST.json`. Exit status: 0 approve, 2 reject,
/// 3 needs approval.
pub fn eval(file: &Path, request: &Path, json: bool) -> anyhow::Result<i32> {
    let policy = load(file, json)?;
    let req = EvalRequest::from_json_slice(&read(request)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", request.display()))?;
    let decision = policy.evaluate(&req.view, &req.context);
    let report = DecisionReport::new(&policy, &req.view, &decision);
    println!(
        "{}",
        if json {
            report.to_json()
        } else {
            report.to_text()
        }
    );
    Ok(match decision {
        Decision::Approve(_) => 0,
        Decision::Reject(_) => 2,
        Decision::NeedsApproval { .. } => 3,
    })
}
