//! Helpers shared by the benchmark binaries in `tests/benches/` (run by hand).

use std::time::Duration;

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile `p` (0..=1) of `v`; NaN when empty.
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Points `SIGNER_BIN` at the `signer` binary next to the running benchmark binary
/// (`target/<profile>/<bench>` -> `target/<profile>/signer`) unless already set.
pub fn use_signer_next_to_this_binary() -> anyhow::Result<()> {
    if std::env::var_os("SIGNER_BIN").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("signer"))
        .filter(|b| b.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no signer binary next to {}; build it with the same profile",
                exe.display()
            )
        })?;
    std::env::set_var("SIGNER_BIN", bin);
    Ok(())
}
