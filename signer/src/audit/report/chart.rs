//! Inline SVG chart of one key's outflow per UTC day (bars) against its velocity
//! limits (dashed step lines: the limit in force at the end of each day). No
//! script, no external resource; every text is escaped.

use std::fmt::Write as _;

use super::model::KeyOutflow;
use super::{sats, Esc};

const W: f64 = 1260.0;
const H: f64 = 300.0;
const LEFT: f64 = 96.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 44.0;
const COLORS: [&str; 4] = ["#c62828", "#ef6c00", "#6a1b9a", "#00838f"];

/// `1 d`, `6 h`, `30 min`, `45 s`.
pub fn window(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A round step for about four ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 4.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let nice = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 2.5 {
        2.5
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    (nice * mag).max(1.0)
}

/// Whether day `i`'s outflow exceeds a limit of a window of a day or more (a
/// shorter window is not comparable with a daily total).
pub fn over_limit(k: &KeyOutflow, i: usize) -> bool {
    let sats = k.outflow.get(i).map_or(0, |o| o.sats);
    k.limits.iter().any(|l| {
        l.window_seconds >= 86_400
            && l.max_sats
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|m| sats > m)
    })
}

/// The chart of `k` as an `<svg>` element.
pub fn svg(k: &KeyOutflow) -> String {
    let n = k.days.len().max(1);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let max_out = k.outflow.iter().map(|o| o.sats).max().unwrap_or(0);
    let max_limit = k
        .limits
        .iter()
        .flat_map(|l| l.max_sats.iter().flatten())
        .copied()
        .max()
        .unwrap_or(0);
    let top = (max_out.max(max_limit) as f64 * 1.12).max(1.0);
    let step = tick_step(top);
    let top = (top / step).ceil() * step;
    let y = |v: f64| TOP + ph - v / top * ph;
    let slot = pw / n as f64;
    let bar = (slot * 0.7).min(48.0);

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" \
         width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"Outflow per day of key {}\">",
        Esc(&k.key_id)
    );
    let _ = write!(
        s,
        "<title>Outflow per day of key {} against its velocity limits</title>",
        Esc(&k.key_id)
    );
    // Grid and y axis.
    let mut v = 0.0;
    while v <= top + 0.5 {
        let yy = y(v);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            sats(v as u64)
        );
        v += step;
    }
    let _ = write!(
        s,
        "<text class=\"axis\" x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" \
         text-anchor=\"middle\">sats</text>",
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Bars.
    let mut unknown_days = 0;
    for (i, o) in k.outflow.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let day = k.days.get(i).map(|d| d.to_string()).unwrap_or_default();
        if o.sats > 0 {
            let yy = y(o.sats as f64);
            let class = if over_limit(k, i) { "bar over" } else { "bar" };
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{bar:.1}\" \
                 height=\"{:.1}\"><title>{day}: {} sats in {} approved transaction(s)</title></rect>",
                (TOP + ph - yy).max(0.5),
                sats(o.sats),
                o.transactions
            );
        }
        if o.unknown > 0 {
            unknown_days += 1;
            let _ = write!(
                s,
                "<text class=\"unknown\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">?\
                 <title>{day}: {} approved transaction(s) without an amount in the records</title></text>",
                x + bar / 2.0,
                TOP + ph - 4.0,
                o.unknown
            );
        }
    }
    // Limits: a dashed step line per window.
    for (li, l) in k.limits.iter().enumerate() {
        let color = COLORS[li % COLORS.len()];
        let mut d = String::new();
        let mut prev: Option<f64> = None;
        let mut last_y = None;
        for (i, m) in l.max_sats.iter().enumerate() {
            let x0 = LEFT + slot * i as f64;
            let x1 = x0 + slot;
            match m {
                Some(m) => {
                    let yy = y(*m as f64);
                    match prev {
                        Some(p) if (p - yy).abs() < 0.01 => {}
                        Some(_) => {
                            let _ = write!(d, "L{x0:.1},{yy:.1}");
                        }
                        None => {
                            let _ = write!(d, "M{x0:.1},{yy:.1}");
                        }
                    }
                    let _ = write!(d, "L{x1:.1},{yy:.1}");
                    prev = Some(yy);
                    last_y = Some((yy, *m));
                }
                None => prev = None,
            }
        }
        if d.is_empty() {
            continue;
        }
        let _ = write!(
            s,
            "<path class=\"limit\" d=\"{d}\" stroke=\"{color}\"><title>velocity limit: at most {} \
             sats per {}</title></path>",
            l.max_sats
                .iter()
                .flatten()
                .last()
                .map_or(String::new(), |m| sats(*m)),
            window(l.window_seconds)
        );
        if let Some((yy, m)) = last_y {
            let x = LEFT + pw + 6.0;
            let note = if l.window_seconds < 86_400 {
                format!(
                    "<tspan class=\"limit-note\" x=\"{x:.1}\" dy=\"14\">window under a day</tspan>"
                )
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "<text class=\"limit-label\" x=\"{x:.1}\" y=\"{:.1}\" fill=\"{color}\">\
                 ≤ {} / {}{note}</text>",
                yy + 4.0,
                sats(m),
                window(l.window_seconds)
            );
        }
    }
    // X axis: dates (at most about 12 labels).
    let every = n.div_ceil(12).max(1);
    let _ = write!(
        s,
        "<line class=\"axis-line\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    for (i, d) in k.days.iter().enumerate() {
        if i % every != 0 && i + 1 != k.days.len() {
            continue;
        }
        let _ = write!(
            s,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            LEFT + slot * i as f64 + slot / 2.0,
            TOP + ph + 18.0,
            d.format("%Y-%m-%d")
        );
    }
    if max_out == 0 {
        let msg = if unknown_days > 0 {
            "approved transactions, but their records carry no amount"
        } else {
            "no approved outflow in this bundle"
        };
        let _ = write!(
            s,
            "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{msg}</text>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    s.push_str("</svg>");
    s
}
