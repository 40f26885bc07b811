//! HTML output: one self-contained page. Inline CSS and SVG, no script, no
//! external resource (and a Content-Security-Policy that allows neither); every
//! string from the bundle goes through [`Esc`].

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::model::{AuditReport, Transaction, Verification};
use super::{chart, limits_text, sats, ts, Esc};

const CSS: &str = r#"
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dee7;--bg:#f5f6f8;--ok:#1b7f3b;--bad:#b3261e;--warn:#9a5b00;--head:#eef1f5}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1360px;margin:0 auto;padding:22px 28px 40px}
h1{font-size:24px;margin:0 0 6px}
h2{font-size:18px;margin:30px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h2 .count{color:var(--muted);font-weight:400;font-size:14px;margin-left:6px}
h3{font-size:14px;margin:0 0 6px}
p{margin:4px 0}
.meta{color:var(--muted)}
code,.mono{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12px}
.banner{position:sticky;top:0;z-index:1;background:var(--bad);color:#fff;padding:12px 28px;font-size:15px;border-bottom:4px solid #7a1712}
.banner strong{display:block;font-size:24px;letter-spacing:.12em}
.banner code{color:#fff;font-size:13px}
.stamp{display:inline-block;border:2px solid var(--bad);color:var(--bad);font-weight:700;letter-spacing:.1em;padding:0 8px;margin-left:10px;font-size:14px;vertical-align:middle}
.cards{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card .n{font-size:24px;font-weight:650;line-height:1.2}
.card .l{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.card .d{color:var(--muted);font-size:12px}
.card.good .n{color:var(--ok)}
.card.bad{border-color:var(--bad);background:#fff7f6}
.card.bad .n{color:var(--bad)}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line)}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid var(--line)}
th{background:var(--head);font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
td ul{margin:0;padding:0;list-style:none}
table.tx td:first-child{min-width:170px}
table.tx td:last-child{min-width:210px}
td li{margin:0 0 2px}
.wrap{word-break:break-all}
.nowrap{white-space:nowrap}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:11.5px;font-weight:650;background:#e8ebf0;white-space:nowrap}
.badge.approve,.badge.signed,.badge.broadcast,.badge.confirmed,.badge.completed,.badge.VALID{background:#dcf2e2;color:var(--ok)}
.badge.reject,.badge.rejected,.badge.failed,.badge.expired,.badge.INVALID{background:#fbe1de;color:var(--bad)}
.badge.submitted,.badge.awaiting_approval,.badge.approved,.badge.signing{background:#fdf0d5;color:var(--warn)}
.muted{color:var(--muted)}
.small{font-size:12px}
.reasons{color:var(--bad);font-size:12px}
.chart-box{background:#fff;border:1px solid var(--line);padding:10px 12px;margin-bottom:12px}
svg.chart{display:block;max-width:100%;height:auto}
svg .grid{stroke:#e4e8ee;stroke-width:1}
svg .axis-line{stroke:#8a93a3;stroke-width:1}
svg .tick,svg .axis{font-size:11px;fill:#5b6475}
svg .bar{fill:#3d6fc4}
svg .bar.over{fill:#c62828}
svg .limit{fill:none;stroke-width:2;stroke-dasharray:7 4}
svg .limit-label{font-size:12px;font-weight:650}
svg .limit-note{font-size:10.5px;font-weight:400}
svg .empty{font-size:13px;fill:#8a93a3}
svg .unknown{font-size:13px;fill:#9a5b00;font-weight:700}
.legend{color:var(--muted);font-size:12px;margin-top:4px}
.none{color:var(--muted);font-style:italic;background:#fff;border:1px solid var(--line);padding:8px 10px}
details{background:#fff;border:1px solid var(--line);padding:6px 10px}
details table{border:0;margin-top:6px}
footer{margin-top:34px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
@media print{body{background:#fff}.card,.chart-box,table{break-inside:avoid}}
"#;

/// `1 problem`, `2 problems`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// An id or hash: shortened, the whole value in the tooltip.
fn code(s: &str, n: usize) -> String {
    format!("<code title=\"{}\">{}</code>", Esc(s), Esc(&short(s, n)))
}

fn time(t: DateTime<Utc>) -> String {
    format!(
        "<span class=\"nowrap\" title=\"{}\">{}</span>",
        Esc(&t.to_rfc3339()),
        Esc(&ts(t))
    )
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_default()
}

fn badge(class: &str, text: &str) -> String {
    // The class is one of ours or a bundle string: escaped like any text.
    format!("<span class=\"badge {}\">{}</span>", Esc(class), Esc(text))
}

fn section_head(o: &mut String, id: &str, title: &str, count: usize) {
    let _ = write!(
        o,
        "<h2 id=\"{id}\">{title}<span class=\"count\">{count}</span></h2>"
    );
}

fn none(o: &mut String, what: &str) {
    let _ = write!(o, "<p class=\"none\">{what}</p>");
}

/// The page.
pub fn render(r: &AuditReport) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let h = &r.header;
    let unverified = !r.verification.is_valid();
    let title = format!(
        "{}Audit report, cluster {}, {} to {}",
        if unverified { "UNVERIFIED – " } else { "" },
        h.cluster_id,
        ts(h.from),
        ts(h.to)
    );
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"generator\" content=\"signer {} audit report\">\
         <title>{}</title><style>{CSS}</style></head><body>\n",
        env!("CARGO_PKG_VERSION"),
        Esc(&title)
    );
    if let Verification::Unverified {
        first_problem,
        problems,
    } = &r.verification
    {
        let _ = writeln!(
            o,
            "<div class=\"banner\" role=\"alert\" id=\"unverified\"><strong>UNVERIFIED</strong>\
             This bundle does not verify ({}); its content may have been altered and \
             this report must not be relied on. First broken item: <code>{}</code></div>",
            count(*problems, "problem", "problems"),
            Esc(first_problem)
        );
    }
    o.push_str("<main>\n");
    let _ = write!(
        o,
        "<h1>Audit report — cluster {}{}</h1>",
        Esc(&h.cluster_id),
        if unverified {
            "<span class=\"stamp\">UNVERIFIED</span>"
        } else {
            ""
        }
    );
    let _ = write!(
        o,
        "<p class=\"meta\">Bundle {} exported by <b>{}</b> at {}. Requested range {} to {}",
        code(&h.bundle_id.to_string(), 36),
        Esc(&h.exporter),
        time(h.created_at),
        time(h.from),
        time(h.to)
    );
    if let Some((first, last)) = r.span() {
        let _ = write!(o, "; records from {} to {}", time(first), time(last));
    }
    o.push_str(".</p>\n");
    cards(&mut o, r);
    nodes(&mut o, r);
    charts(&mut o, r);
    transactions(&mut o, r);
    ceremonies(&mut o, r);
    tokens(&mut o, r);
    approvers(&mut o, r);
    policies(&mut o, r);
    violations(&mut o, r);
    custody(&mut o, r);
    actions(&mut o, r);
    let _ = write!(
        o,
        "<footer>Made offline from the bundle's records by <code>signer audit report</code> \
         (signer {}). {} Check the bundle yourself with <code>signer audit verify-export \
         BUNDLE --ca-cert CA.pem</code>.</footer>\n</main></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        if unverified {
            "The bundle did NOT verify: this report is UNVERIFIED."
        } else {
            "The bundle verified (hash chains, checkpoints, certificates, manifest) before this report was made."
        }
    );
    o
}

fn card(o: &mut String, class: &str, n: &str, label: &str, detail: &str) {
    let _ = write!(
        o,
        "<div class=\"card {class}\"><div class=\"l\">{label}</div><div class=\"n\">{n}</div>\
         <div class=\"d\">{detail}</div></div>"
    );
}

fn cards(o: &mut String, r: &AuditReport) {
    o.push_str("<section class=\"cards\">");
    match &r.verification {
        Verification::Valid { checkpoints, notes } => card(
            o,
            "good",
            "VALID",
            "Verification",
            &format!(
                "{} verified{}",
                count(
                    usize::try_from(*checkpoints).unwrap_or(usize::MAX),
                    "checkpoint",
                    "checkpoints"
                ),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(", {}", count(notes.len(), "note", "notes"))
                }
            ),
        ),
        Verification::Unverified { problems, .. } => card(
            o,
            "bad",
            "INVALID",
            "Verification",
            &format!(
                "{}: report UNVERIFIED",
                count(*problems, "problem", "problems")
            ),
        ),
    }
    card(
        o,
        "",
        &r.nodes.len().to_string(),
        "Nodes",
        &format!("threshold {}", r.header.threshold),
    );
    card(
        o,
        "",
        &r.records.to_string(),
        "Records",
        &count(
            usize::try_from(r.checkpoint_lines).unwrap_or(usize::MAX),
            "checkpoint line",
            "checkpoint lines",
        ),
    );
    let signed = r.count_state("signed") + r.count_state("broadcast") + r.count_state("confirmed");
    card(
        o,
        "",
        &r.transactions.len().to_string(),
        "Transactions",
        &format!(
            "{signed} signed, {} rejected, {} expired or failed",
            r.count_state("rejected"),
            r.count_state("expired") + r.count_state("failed")
        ),
    );
    let dkg = r.ceremonies.iter().filter(|c| c.kind == "dkg").count();
    card(
        o,
        "",
        &r.ceremonies.len().to_string(),
        "Key ceremonies",
        &format!("{dkg} DKG, {} aux info", r.ceremonies.len() - dkg),
    );
    card(
        o,
        "",
        &(r.tokens.len() + r.approvers.len()).to_string(),
        "Access changes",
        &format!(
            "{}, {}",
            count(r.tokens.len(), "token change", "token changes"),
            count(
                r.approvers.len(),
                "approver endorsement",
                "approver endorsements"
            )
        ),
    );
    let unrecorded = r.votes_under_unrecorded_policy();
    let distinct = count(
        r.policies
            .iter()
            .filter_map(|p| p.hash.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        "distinct policy",
        "distinct policies",
    );
    card(
        o,
        if unrecorded > 0 { "bad" } else { "" },
        &r.policies.len().to_string(),
        "Policy versions",
        &if unrecorded > 0 {
            format!(
                "{distinct}; {} under a policy not recorded",
                count(unrecorded, "vote", "votes")
            )
        } else {
            distinct
        },
    );
    card(
        o,
        if r.violations.is_empty() {
            "good"
        } else {
            "bad"
        },
        &r.violations.len().to_string(),
        "Byzantine violations",
        &count(r.custody.len(), "custody event", "custody events"),
    );
    o.push_str("</section>\n");
    if let Verification::Valid { notes, .. } = &r.verification {
        for n in notes {
            let _ = write!(o, "<p class=\"small muted\">Verifier note: {}</p>", Esc(n));
        }
    }
    if r.unreadable_lines > 0 {
        let _ = write!(
            o,
            "<p class=\"reasons\">{} line(s) of the bundle could not be read and are not in this report.</p>",
            r.unreadable_lines
        );
    }
}

fn nodes(o: &mut String, r: &AuditReport) {
    section_head(o, "nodes", "Nodes", r.nodes.len());
    o.push_str(
        "<table><tr><th>Node</th><th class=\"num\">Records</th><th>Sequence numbers</th>\
         <th>First record</th><th>Last record</th></tr>",
    );
    for n in &r.nodes {
        let _ = write!(
            o,
            "<tr><td>{}{}</td><td class=\"num\">{}</td><td>{} – {}</td><td>{}</td><td>{}</td></tr>",
            Esc(&n.node_id),
            if n.node_id == r.header.exporter {
                " <span class=\"muted small\">(exporter)</span>"
            } else {
                ""
            },
            n.records,
            n.from_seq,
            n.to_seq,
            opt_time(n.first),
            opt_time(n.last)
        );
    }
    o.push_str("</table>\n");
}

fn charts(o: &mut String, r: &AuditReport) {
    section_head(
        o,
        "outflow",
        "Outflow per day against velocity limits",
        r.outflow.len(),
    );
    if r.outflow.is_empty() {
        none(
            o,
            "No key has transactions or velocity limits in this bundle.",
        );
        return;
    }
    for k in &r.outflow {
        let total: u64 = k.outflow.iter().map(|d| d.sats).sum();
        let txs: u64 = k.outflow.iter().map(|d| d.transactions).sum();
        let unknown: u64 = k.outflow.iter().map(|d| d.unknown).sum();
        let over = (0..k.days.len())
            .filter(|i| chart::over_limit(k, *i))
            .count();
        let _ = write!(
            o,
            "<div class=\"chart-box\"><h3>Key {} <span class=\"muted small\">{} sats in {}{}{}</span></h3>{}",
            code(&k.key_id, 40),
            sats(total),
            count(
                usize::try_from(txs).unwrap_or(usize::MAX),
                "approved transaction",
                "approved transactions"
            ),
            if unknown > 0 {
                format!(", {unknown} without an amount in the records (marked ?)")
            } else {
                String::new()
            },
            if over > 0 {
                format!(", <b class=\"reasons\">{over} day(s) over a limit</b>")
            } else {
                String::new()
            },
            chart::svg(k)
        );
        let limits: Vec<String> = k
            .limits
            .iter()
            .map(|l| format!("per {}", chart::window(l.window_seconds)))
            .collect();
        let _ = write!(
            o,
            "<p class=\"legend\">Bars: outflow (outputs leaving the wallet plus fee) of the \
             transactions a quorum approved, by UTC day of approval; red: over a limit of a \
             window of a day or more. Dashed: velocity limits ({}) in force at the end of each \
             day, the strictest of the nodes' policies.{}</p></div>",
            if limits.is_empty() {
                "none for this key".to_owned()
            } else {
                Esc(&limits.join(", ")).to_string()
            },
            if k.limits.iter().any(|l| l.window_seconds < 86_400) {
                " A window shorter than a day is not comparable with a daily total."
            } else {
                ""
            }
        );
    }
}

fn tx_amount(t: &Transaction) -> String {
    let mut parts = Vec::new();
    if let Some(a) = t.amount_sats {
        parts.push(format!("<b>{}</b>", sats(a)));
    }
    if let Some(rcpt) = &t.recipient {
        parts.push(format!("<span class=\"wrap small\">→ {}</span>", Esc(rcpt)));
    }
    if let Some(f) = t.fee_sats {
        parts.push(format!(
            "<span class=\"small muted\">fee {}</span>",
            sats(f)
        ));
    }
    if let (Some(out), None) = (t.outflow_sats, t.amount_sats) {
        parts.push(format!(
            "<span class=\"small\">outflow {}</span>",
            sats(out)
        ));
    }
    if parts.is_empty() {
        return "<span class=\"muted\">—</span>".to_owned();
    }
    parts.join("<br>")
}

fn tx_votes(r: &AuditReport, t: &Transaction) -> String {
    if t.votes.is_empty() {
        return "<span class=\"muted\">none</span>".to_owned();
    }
    let mut o = String::from("<ul>");
    for v in t.votes.values() {
        let hash = v.policy_hash.as_deref().unwrap_or_default();
        let policy = match (
            r.policy_status(v.policy_hash.as_deref()),
            r.policy_name(hash),
        ) {
            ("none", _) => "<span class=\"reasons\">none loaded</span>".to_owned(),
            ("not_recorded", _) => format!(
                "{} <span class=\"reasons\" title=\"no policy version in the bundle has this \
                 hash: its text cannot be checked\">not recorded</span>",
                code(hash, 8)
            ),
            (_, Some(name)) => format!("{} {}", Esc(name), code(hash, 8)),
            (_, None) => code(hash, 8),
        };
        let _ = write!(
            o,
            "<li>{} {} <span class=\"small muted\">policy {policy}</span>",
            Esc(&v.node),
            badge(&v.decision, &v.decision)
        );
        if !v.reasons.is_empty() {
            let _ = write!(
                o,
                "<br><span class=\"reasons\">{}</span>",
                Esc(&v.reasons.join(", "))
            );
        }
        o.push_str("</li>");
    }
    o.push_str("</ul>");
    o
}

fn tx_approvals(t: &Transaction) -> String {
    if t.approvals.is_empty() {
        return "<span class=\"muted\">—</span>".to_owned();
    }
    let mut o = String::from("<ul>");
    for a in t.approvals.values() {
        let _ = write!(
            o,
            "<li><b>{}</b> <span class=\"small muted\">{} via {}</span></li>",
            Esc(&a.approver),
            Esc(&a.role),
            Esc(&a.via_node)
        );
    }
    o.push_str("</ul>");
    o
}

fn tx_timeline(t: &Transaction) -> String {
    let mut o = String::from("<ul class=\"small\">");
    for s in t.timeline() {
        let nodes: Vec<&str> = s.nodes.iter().map(String::as_str).collect();
        // One node by name; several as a count, named in the tooltip.
        let who = match nodes.as_slice() {
            [one] => Esc(one).to_string(),
            many => format!(
                "<span title=\"{}\">{} nodes</span>",
                Esc(&many.join(", ")),
                many.len()
            ),
        };
        let _ = write!(
            o,
            "<li><span class=\"nowrap\" title=\"{}\">{}</span> <b>{}</b> <span class=\"muted\">{who}</span></li>",
            Esc(&s.ts.to_rfc3339()),
            s.ts.format("%m-%d %H:%M:%S"),
            Esc(s.name)
        );
    }
    o.push_str("</ul>");
    o
}

fn transactions(o: &mut String, r: &AuditReport) {
    section_head(o, "transactions", "Transactions", r.transactions.len());
    if r.transactions.is_empty() {
        none(o, "No transaction in this bundle.");
        return;
    }
    o.push_str(
        "<table class=\"tx\"><tr><th>Transaction</th><th>Initiator</th><th>Amount (sats)</th>\
         <th>Votes (policy hash)</th><th>Approvers</th><th>Signers</th><th>State</th>\
         <th>Timeline</th></tr>",
    );
    for (i, t) in r.transactions.iter().enumerate() {
        let state = t.state();
        let mut state_cell = badge(state, state);
        for (other, nodes) in t.other_outcomes() {
            let _ = write!(
                state_cell,
                "<br><span class=\"small reasons\">{} on {}</span>",
                Esc(other),
                Esc(&nodes.into_iter().collect::<Vec<_>>().join(", "))
            );
        }
        for (node, code_) in &t.refusals {
            let _ = write!(
                state_cell,
                "<br><span class=\"small muted\">{} refused to sign: {}</span>",
                Esc(node),
                Esc(code_)
            );
        }
        let signers: Vec<&str> = t.signers.iter().map(String::as_str).collect();
        let _ = write!(
            o,
            "<tr id=\"tx-{i}\"><td>{}<br><span class=\"small muted\">key</span> {}<br>\
             <span class=\"small muted\">txid</span> {}<br><span class=\"small muted\">leader {}</span></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{state_cell}</td><td>{}</td></tr>",
            code(&t.id, 13),
            t.key_id.as_deref().map_or(String::new(), |k| code(k, 13)),
            t.txid.as_deref().map_or(String::new(), |x| code(x, 13)),
            Esc(t.leader.as_deref().unwrap_or("?")),
            t.initiator
                .as_deref()
                .map_or("<span class=\"muted\">?</span>".to_owned(), |a| Esc(&r.actor(a))
                    .to_string()),
            tx_amount(t),
            tx_votes(r, t),
            tx_approvals(t),
            if signers.is_empty() {
                "<span class=\"muted\">—</span>".to_owned()
            } else {
                Esc(&signers.join(", ")).to_string()
            },
            tx_timeline(t)
        );
    }
    o.push_str("</table>\n");
}

fn ceremonies(o: &mut String, r: &AuditReport) {
    section_head(o, "ceremonies", "Key ceremonies", r.ceremonies.len());
    if r.ceremonies.is_empty() {
        none(o, "No DKG or aux-info ceremony in this bundle.");
        return;
    }
    o.push_str(
        "<table><tr><th>Ceremony / key</th><th>Kind</th><th>t</th><th>Participants</th>\
         <th>Requested by</th><th>Coordinator</th><th>Started</th><th>Ended</th>\
         <th>Outcome</th><th>Public key / digest</th></tr>",
    );
    for c in &r.ceremonies {
        let kind = match (c.kind.as_str(), c.protocol.as_deref()) {
            ("dkg", Some(p)) => format!("DKG {p}"),
            ("dkg", None) => "DKG".to_owned(),
            _ => "aux info".to_owned(),
        };
        let mut outcome = badge(
            if c.failed.is_empty() && !c.completed.is_empty() {
                "completed"
            } else if !c.failed.is_empty() {
                "failed"
            } else {
                ""
            },
            &c.outcome(),
        );
        for (node, (_, why)) in &c.failed {
            let _ = write!(
                outcome,
                "<br><span class=\"small reasons\">{}: {}</span>",
                Esc(node),
                Esc(why)
            );
        }
        for (at, by) in &c.reused {
            let _ = write!(
                outcome,
                "<br><span class=\"small muted\">reused {} by {}</span>",
                Esc(&ts(*at)),
                Esc(&r.actor(by))
            );
        }
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{outcome}</td><td>{}</td></tr>",
            code(&c.id, 18),
            Esc(&kind),
            c.threshold.map(|t| t.to_string()).unwrap_or_default(),
            Esc(&c.participants.join(", ")),
            Esc(&c.requested_by.as_deref().map(|a| r.actor(a)).unwrap_or_default()),
            Esc(c.coordinator.as_deref().unwrap_or_default()),
            opt_time(c.started),
            opt_time(c.ended()),
            c.public.as_deref().map_or(String::new(), |p| code(p, 18))
        );
    }
    o.push_str("</table>\n");
}

fn tokens(o: &mut String, r: &AuditReport) {
    section_head(o, "tokens", "Token changes", r.tokens.len());
    if r.tokens.is_empty() {
        none(o, "No token created or revoked in this bundle.");
        return;
    }
    o.push_str(
        "<table><tr><th>Time</th><th>Node</th><th>Change</th><th>Token</th><th>Name</th>\
         <th>Role</th><th>By</th></tr>",
    );
    for t in &r.tokens {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(t.ts),
            Esc(&t.node),
            badge(
                if t.action == "revoke" { "rejected" } else { "" },
                &t.action
            ),
            code(&t.token, 16),
            Esc(t.name.as_deref().unwrap_or_default()),
            Esc(t.role.as_deref().unwrap_or_default()),
            Esc(&r.actor(&t.by))
        );
    }
    o.push_str("</table>\n");
}

fn approvers(o: &mut String, r: &AuditReport) {
    section_head(o, "approvers", "Approver endorsements", r.approvers.len());
    if r.approvers.is_empty() {
        none(o, "No approver endorsed in this bundle.");
        return;
    }
    o.push_str(
        "<table><tr><th>Time</th><th>Endorsing node</th><th>Approver</th><th>Role</th>\
         <th>Public key</th><th>Endorsed by</th></tr>",
    );
    for a in &r.approvers {
        let _ =
            write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(a.ts),
            Esc(&a.node),
            Esc(&a.approver),
            Esc(a.role.as_deref().unwrap_or_default()),
            a.public_key.as_deref().map_or(String::new(), |k| code(k, 16)),
            Esc(&r.actor(&a.by))
        );
    }
    o.push_str("</table>\n");
}

fn policies(o: &mut String, r: &AuditReport) {
    section_head(o, "policies", "Policy versions", r.policies.len());
    if r.policies.is_empty() {
        none(o, "No policy version in this bundle.");
        return;
    }
    o.push_str(
        "<table><tr><th>Recorded</th><th>Node</th><th>Name</th><th>Policy hash</th>\
         <th>Change</th><th>Limits</th></tr>",
    );
    for p in &r.policies {
        let change = match (&p.previous_hash, &p.error) {
            (_, Some(e)) => format!("<span class=\"reasons\">does not load: {}</span>", Esc(e)),
            (Some(prev), None) => format!("changed from {}", code(prev, 12)),
            (None, None) => "<span class=\"muted\">first in the bundle</span>".to_owned(),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td class=\"nowrap\">{}<br>\
             <span class=\"small muted\">file</span> {}</td><td>{change}</td><td class=\"small\">{}</td></tr>",
            time(p.ts),
            Esc(&p.node),
            Esc(p.name.as_deref().unwrap_or_default()),
            p.hash.as_deref().map_or(String::new(), |h| code(h, 16)),
            code(&p.text_sha256, 16),
            Esc(&limits_text(&p.scopes))
        );
    }
    o.push_str("</table>\n");
}

fn violations(o: &mut String, r: &AuditReport) {
    section_head(o, "violations", "Byzantine violations", r.violations.len());
    if r.violations.is_empty() {
        none(o, "No node recorded a violation in this bundle.");
        return;
    }
    o.push_str(
        "<table><tr><th>Time</th><th>Detected by</th><th>Culprit</th><th>Type</th>\
         <th>Session</th><th>Details</th></tr>",
    );
    for v in &r.violations {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\"><b>{}</b></td><td>{}</td><td>{}</td><td class=\"small wrap\">{}</td></tr>",
            time(v.ts),
            Esc(&v.detected_by),
            Esc(&v.culprit),
            badge("rejected", &v.kind),
            v.session.as_deref().map_or(String::new(), |s| code(s, 40)),
            Esc(&v.detail)
        );
    }
    o.push_str("</table>\n");
}

fn custody(o: &mut String, r: &AuditReport) {
    section_head(o, "custody", "Custody events", r.custody.len());
    if r.custody.is_empty() {
        none(
            o,
            "No KEK rotation, destroyed KEK, frozen key or unpinned vote key in this bundle.",
        );
        return;
    }
    o.push_str(
        "<table><tr><th>Time</th><th>Node</th><th>Event</th><th>By</th><th>Subject</th>\
         <th>Details</th></tr>",
    );
    for e in &r.custody {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"small wrap\">{}</td></tr>",
            time(e.ts),
            Esc(&e.node),
            Esc(&e.action),
            Esc(&r.actor(&e.actor)),
            Esc(e.subject.as_deref().unwrap_or_default()),
            Esc(&e.detail)
        );
    }
    o.push_str("</table>\n");
}

fn actions(o: &mut String, r: &AuditReport) {
    section_head(o, "actions", "Records by action", r.actions.len());
    let _ = write!(
        o,
        "<details><summary>{} records of {} kinds</summary><table><tr><th>Action</th>\
         <th class=\"num\">Records</th></tr>",
        r.records,
        r.actions.len()
    );
    for (a, n) in &r.actions {
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td class=\"num\">{n}</td></tr>",
            Esc(a)
        );
    }
    o.push_str("</table></details>\n");
}
