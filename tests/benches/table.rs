//! `bench-table FILE`: the table `make bench` prints, from the JSON-lines figures
//! the benchmarks of one run appended to FILE (`BENCH_RESULTS`, see
//! `cluster_tests::bench::Figure`): each figure, the bare library's figure from the
//! same run and the ratio, the target, and the original system's figure.
#![forbid(unsafe_code)]

use cluster_tests::bench::Figure;

fn cell(v: Option<String>) -> String {
    v.unwrap_or_default().replace('|', "\\|")
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: bench-table RESULTS.jsonl"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    let mut figures = Vec::new();
    for (no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Figure =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{path}:{}: {e}", no + 1))?;
        figures.push(f);
    }
    anyhow::ensure!(!figures.is_empty(), "{path}: no figures");
    println!(
        "| benchmark | figure | value | library (same run) | ratio | target | original system |"
    );
    println!("|---|---|---|---|---|---|---|");
    for f in figures {
        let ratio = f
            .lib
            .filter(|l| *l > 0.0)
            .map(|l| format!("{:.2}×", f.value / l));
        println!(
            "| {} | {} | {} {} | {} | {} | {} | {} |",
            f.bench,
            cell(Some(f.what)),
            num(f.value),
            f.unit,
            cell(f.lib.map(|l| format!("{} {}", num(l), f.unit))),
            cell(ratio),
            cell(f.target),
            cell(f.seed)
        );
    }
    Ok(())
}
