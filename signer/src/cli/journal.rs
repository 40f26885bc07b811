//! `[log] format = "journald"`: JSON lines on stderr, each prefixed with its syslog
//! priority (`<3>` … `<7>`, sd-daemon(3)). Under systemd, journald reads the
//! service's stderr, strips the prefix into the entry's `PRIORITY=` (so `journalctl
//! -p warning -u signer` works) and keeps the JSON line (level, target, fields) as
//! `MESSAGE=`; `SYSLOG_IDENTIFIER=` comes from the unit.

use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Makes a [`PrefixedLine`] for each event, with the event's priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorityStderr;

/// The syslog priority of a `tracing` level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<'a> MakeWriter<'a> for PriorityStderr {
    type Writer = PrefixedLine<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        PrefixedLine::new(io::stderr(), 6)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        PrefixedLine::new(io::stderr(), priority(meta.level()))
    }
}

/// Writes `<priority>` before the first bytes of one formatted event, in the same
/// write so that lines of concurrent events do not interleave with a prefix.
#[derive(Debug)]
pub struct PrefixedLine<W> {
    inner: W,
    prefix: Option<u8>,
}

impl<W> PrefixedLine<W> {
    fn new(inner: W, priority: u8) -> Self {
        PrefixedLine {
            inner,
            prefix: Some(priority),
        }
    }
}

impl<W: Write> Write for PrefixedLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.prefix.take() {
            Some(p) => {
                let mut line = Vec::with_capacity(buf.len() + 3);
                line.push(b'<');
                line.push(b'0' + p);
                line.push(b'>');
                line.extend_from_slice(buf);
                self.inner.write_all(&line)?;
            }
            None => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_gets_its_priority_once() {
        let mut out = Vec::new();
        let mut w = PrefixedLine::new(&mut out, priority(&Level::WARN));
        w.write_all(b"{\"level\":\"WARN\"").expect("write");
        w.write_all(b"}\n").expect("write");
        assert_eq!(out, b"<4>{\"level\":\"WARN\"}\n");
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
