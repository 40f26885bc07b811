//! Child process helpers: spawn detached, record pids, stop gracefully.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Spawns `cmd` in its own process group with stdout/stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", cmd.get_program()))?;
    Ok(child.id())
}

/// Whether a process exists.
pub fn alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // Reap it if it is our zombie child, so it does not count as alive.
    let _ = nix::sys::wait::waitpid(Pid::from_raw(p), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    kill(Pid::from_raw(p), None).is_ok()
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(pid: u32, grace: Duration) {
    let Ok(p) = i32::try_from(pid) else { return };
    let pid_t = Pid::from_raw(p);
    if kill(pid_t, Signal::SIGTERM).is_err() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < grace {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid_t, Signal::SIGKILL);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Ports this process handed out already: the probe sockets are closed before the
/// port is used, so the kernel may offer the same number again (a CI run's `cluster
/// up` once gave node-1 and node-3 the same API port).
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free TCP and UDP port on 127.0.0.1 (both protocols free on the same number),
/// never one this process handed out before.
pub fn free_port() -> anyhow::Result<u16> {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found on 127.0.0.1")
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let port = super::free_port().expect("a free port");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
}
