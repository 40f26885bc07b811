//! systemd service notifications (`Type=notify`, see sd_notify(3)): `STATUS=` lines
//! at the main steps of the start, `READY=1` once custody is unsealed (key shares
//! loaded; at once for a node without `[custody]`, which has nothing to unseal) and
//! the database answers, `WATCHDOG=1` every half `$WATCHDOG_USEC` while
//! the node's main loops run and its database answers, `STOPPING=1` at shutdown.
//!
//! Messages are single datagrams to `$NOTIFY_SOCKET` (a path, or an abstract socket
//! name written with a leading `@`). Without `$NOTIFY_SOCKET` (dev clusters, tests
//! that do not set it) nothing is sent. A failed send is logged once at debug level
//! and never stops the node.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::infra::{CustodyState, Infra};

/// Where the notifications go, read once from the environment.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    sock: UnixDatagram,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let raw = std::env::var_os("NOTIFY_SOCKET")?;
            let addr = match socket_addr(std::os::unix::ffi::OsStrExt::as_bytes(raw.as_os_str())) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is not a usable socket address; no systemd notifications");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(sock) => Some(Target { addr, sock }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the notification socket");
                    None
                }
            }
        })
        .as_ref()
}

/// `$NOTIFY_SOCKET` as an address: `@name` is the abstract socket `name`, anything
/// else a file system path (absolute, as systemd passes it).
fn socket_addr(raw: &[u8]) -> std::io::Result<SocketAddr> {
    if let Some(name) = raw.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name);
    }
    if raw.first() != Some(&b'/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name (@...)",
        ));
    }
    use std::os::unix::ffi::OsStrExt;
    SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(raw)))
}

/// Sends one notification (newline-separated `KEY=value` assignments). No-op when
/// not started by systemd with `Type=notify`.
pub fn send(state: &str) {
    let Some(t) = target() else { return };
    if let Err(e) = t.sock.send_to_addr(state.as_bytes(), &t.addr) {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

/// `STATUS=<text>` (shown by `systemctl status`). Newlines are replaced: one
/// notification is one line per assignment.
pub fn status(text: &str) {
    send(&format!("STATUS={}", text.replace('\n', " ")));
}

/// `STOPPING=1` with a status line.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// Half the watchdog timeout systemd asks for (`$WATCHDOG_USEC`), if it asks this
/// process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// The `STATUS=` text for a custody state.
fn custody_status(state: &CustodyState) -> String {
    match state {
        CustodyState::Unconfigured => "ready (no [custody]: key operations refused)".to_owned(),
        CustodyState::Sealed { code, .. } if code == "opening" => "opening custody".to_owned(),
        CustodyState::Sealed { code, .. } if code == "loading_keys" => {
            "custody open; loading key shares".to_owned()
        }
        CustodyState::Sealed { code, .. } => format!("sealed: {code}"),
        CustodyState::Unsealed { .. } => "ready".to_owned(),
    }
}

/// Follows the start until the node is ready (custody unsealed, or not configured,
/// and the database answering), sending `STATUS=` on every change and `READY=1`
/// once; and, when systemd asked for a watchdog, pings it every half period while
/// every task in `loops` still runs and the database answers within that half
/// period. Runs until `shutdown`.
pub async fn supervise(node: Arc<Infra>, loops: Vec<AbortHandle>, shutdown: CancellationToken) {
    if target().is_none() {
        return;
    }
    if let Some(every) = watchdog_interval() {
        tokio::spawn(watchdog(node.clone(), every, loops, shutdown.clone()));
    }
    let mut last = String::new();
    let mut ready = false;
    loop {
        let state = node.custody_state();
        let mut text = custody_status(&state);
        let unsealed = matches!(
            state,
            CustodyState::Unsealed { .. } | CustodyState::Unconfigured
        );
        if unsealed && !ready {
            match tokio::time::timeout(Duration::from_secs(5), node.store.ping()).await {
                Ok(Ok(())) => {
                    ready = true;
                    send(&format!("READY=1\nSTATUS={text}"));
                    last = text;
                    tracing::info!("reported ready to systemd");
                    continue;
                }
                _ => text = "custody unsealed; waiting for the database".to_owned(),
            }
        }
        if text != last {
            status(&text);
            last = text;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn watchdog(
    node: Arc<Infra>,
    every: Duration,
    loops: Vec<AbortHandle>,
    shutdown: CancellationToken,
) {
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(i) = loops.iter().position(AbortHandle::is_finished) {
            tracing::error!(
                task = i,
                "a main loop of the node ended: watchdog no longer pinged"
            );
            continue;
        }
        match tokio::time::timeout(every, node.store.ping()).await {
            Ok(Ok(())) => send("WATCHDOG=1"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "database does not answer: watchdog not pinged")
            }
            Err(_) => tracing::warn!("database ping timed out: watchdog not pinged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_this_pid() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }

    #[test]
    fn notify_socket_paths_and_abstract_names() {
        use std::os::linux::net::SocketAddrExt;
        let a = socket_addr(b"@signer/notify").expect("abstract");
        assert_eq!(a.as_abstract_name(), Some(&b"signer/notify"[..]));
        let p = socket_addr(b"/run/systemd/notify").expect("path");
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(socket_addr(b"relative").is_err());
    }

    #[test]
    fn status_lines_name_the_seal_code() {
        let sealed = CustodyState::Sealed {
            code: "wrong_pin".into(),
            reason: "secret text".into(),
        };
        assert_eq!(custody_status(&sealed), "sealed: wrong_pin");
        assert_eq!(
            custody_status(&CustodyState::Unsealed { kek_id: "k".into() }),
            "ready"
        );
    }
}
