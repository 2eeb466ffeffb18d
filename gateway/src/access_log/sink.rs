//! Where access lines go: batches of lines in memory, written out by one background thread.
//!
//! A request appends its line to the current batch under a short lock. A batch that reaches
//! [`BATCH_BYTES`] is queued for the writer thread, which writes it with one system call; a
//! partial batch is written once [`FLUSH_EVERY`] has passed, so a quiet gateway's lines are out
//! within 200 ms (nginx's `access_log ... buffer=32k flush=200ms`). Batches change hands without
//! being copied, and written ones are reused. When the output cannot keep up (a reader that
//! stopped reading a pipe), at most `max_queued` batches wait; the lines after them are dropped
//! and counted, so a proxy thread never blocks on the log and memory stays bounded.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A batch this full is queued for the writer at once.
pub(super) const BATCH_BYTES: usize = 32 * 1024;
/// Partial batches are written at least this often.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Batches waiting for the writer, at most (8 MiB); lines beyond them are dropped.
pub(super) const MAX_QUEUED: usize = 256;
/// Written batches kept for reuse.
const SPARES: usize = 4;

pub(super) struct Sink {
    state: Mutex<State>,
    /// Signalled when a batch is queued.
    ready: Condvar,
    /// Taken before `state` by whoever writes, so batches are written in order.
    out: Mutex<Box<dyn Write + Send>>,
    /// Lines dropped since the start: the writer was behind, or the output failed.
    dropped: AtomicU64,
    max_queued: usize,
}

#[derive(Default)]
struct State {
    current: Batch,
    queued: VecDeque<Batch>,
    spare: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Sink {
    pub(super) fn new(out: Box<dyn Write + Send>, max_queued: usize) -> Sink {
        Sink {
            state: Mutex::new(State {
                current: Batch::with_bytes(fresh()),
                ..State::default()
            }),
            ready: Condvar::new(),
            out: Mutex::new(out),
            dropped: AtomicU64::new(0),
            max_queued,
        }
    }

    /// Appends the line `line` writes (and a newline); `line` returns false to write nothing.
    pub(super) fn append(&self, line: impl FnOnce(&mut Vec<u8>) -> bool) {
        let Ok(mut s) = self.state.lock() else { return };
        let start = s.current.bytes.len();
        if !line(&mut s.current.bytes) {
            s.current.bytes.truncate(start);
            return;
        }
        s.current.bytes.push(b'\n');
        s.current.lines += 1;
        if s.current.bytes.len() < BATCH_BYTES {
            return;
        }
        if s.queued.len() >= self.max_queued {
            let lost = std::mem::take(&mut s.current.lines);
            s.current.bytes.clear();
            self.dropped.fetch_add(lost, Ordering::Relaxed);
            return;
        }
        let full = s.take_current();
        s.queued.push_back(full);
        drop(s);
        self.ready.notify_one();
    }

    /// Lines dropped since the start.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writer thread's loop: queued batches as they come, the partial one when due.
    pub(super) fn run(&self) {
        let mut flushed = Instant::now();
        let mut reported = 0;
        loop {
            let wait = FLUSH_EVERY.saturating_sub(flushed.elapsed());
            {
                let Ok(s) = self.state.lock() else { return };
                let Ok(_) = self
                    .ready
                    .wait_timeout_while(s, wait, |s| s.queued.is_empty())
                else {
                    return;
                };
            }
            let due = flushed.elapsed() >= FLUSH_EVERY;
            self.write_out(due);
            if due {
                flushed = Instant::now();
            }
            let dropped = self.dropped();
            if dropped > reported {
                tracing::warn!(
                    lines = dropped - reported,
                    "access log output fell behind; lines dropped"
                );
                reported = dropped;
            }
        }
    }

    /// Writes the queued batches, and the current one too when `partial`.
    pub(super) fn write_out(&self, partial: bool) {
        let Ok(mut out) = self.out.lock() else { return };
        let batches = {
            let Ok(mut s) = self.state.lock() else { return };
            let mut batches = std::mem::take(&mut s.queued);
            if partial && s.current.lines > 0 {
                let current = s.take_current();
                batches.push_back(current);
            }
            batches
        };
        if batches.is_empty() {
            return;
        }
        let mut failed = false;
        for b in &batches {
            if failed || out.write_all(&b.bytes).is_err() {
                failed = true;
                self.dropped.fetch_add(b.lines, Ordering::Relaxed);
            }
        }
        if out.flush().is_err() && !failed {
            // What the flush lost cannot be told apart from what it wrote; nothing to count.
            tracing::debug!("access log output flush failed");
        }
        drop(out);
        let Ok(mut s) = self.state.lock() else { return };
        for b in batches {
            if s.spare.len() < SPARES && b.bytes.capacity() <= 2 * BATCH_BYTES {
                let mut bytes = b.bytes;
                bytes.clear();
                s.spare.push(bytes);
            }
        }
    }
}

impl State {
    /// The current batch, replaced by an empty one.
    fn take_current(&mut self) -> Batch {
        let next = self.spare.pop().unwrap_or_else(fresh);
        std::mem::replace(&mut self.current, Batch::with_bytes(next))
    }
}

impl Batch {
    fn with_bytes(bytes: Vec<u8>) -> Batch {
        Batch { bytes, lines: 0 }
    }
}

/// An empty batch buffer (with room for the line that crosses the mark).
fn fresh() -> Vec<u8> {
    Vec::with_capacity(BATCH_BYTES + 4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Records each `write` call; fails them all while `broken`.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.writes.lock().expect("lock").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn lines(&self) -> Vec<String> {
            let all = self.writes.lock().expect("lock").concat();
            String::from_utf8(all)
                .expect("UTF-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn line(i: usize) -> String {
        format!("line {i:05} {}", "x".repeat(90))
    }

    #[test]
    fn lines_are_written_in_order_a_batch_per_write() {
        let out = Recorder::default();
        let sink = Sink::new(Box::new(out.clone()), MAX_QUEUED);
        sink.append(|_| false);
        for i in 0..1000 {
            sink.append(|b| {
                b.extend_from_slice(line(i).as_bytes());
                true
            });
        }
        sink.write_out(false);
        let writes = out.writes.lock().expect("lock").clone();
        // Each line is 102 bytes with its newline.
        assert_eq!(writes.len(), 1000 * 102 / BATCH_BYTES);
        assert!(writes.iter().all(|w| w.len() >= BATCH_BYTES));
        sink.write_out(true);
        assert_eq!(out.lines(), (0..1000).map(line).collect::<Vec<_>>());
        assert_eq!(sink.dropped(), 0);
        // Written batches come back for reuse.
        assert!(!sink.state.lock().expect("lock").spare.is_empty());
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_lines_with_bounded_memory() {
        let out = Recorder::default();
        let sink = Sink::new(Box::new(out.clone()), 2);
        let total = 2000;
        for i in 0..total {
            sink.append(|b| {
                b.extend_from_slice(line(i).as_bytes());
                true
            });
            assert!(sink.state.lock().expect("lock").queued.len() <= 2);
        }
        sink.write_out(true);
        let written = out.lines();
        assert!(sink.dropped() > 0);
        assert_eq!(written.len() as u64 + sink.dropped(), total as u64);
        // The two queued batches keep their lines, in order, then the latest partial batch.
        let queued = 2 * BATCH_BYTES.div_ceil(102);
        assert_eq!(
            written[..queued],
            (0..queued).map(line).collect::<Vec<_>>()[..]
        );
        let tail = written.len() - queued;
        let expected: Vec<_> = (total - tail..total).map(line).collect();
        assert_eq!(written[queued..], expected[..]);
    }

    #[test]
    fn lines_lost_to_a_failing_output_are_counted() {
        let out = Recorder::default();
        out.broken.store(true, Ordering::Relaxed);
        let sink = Sink::new(Box::new(out.clone()), MAX_QUEUED);
        for i in 0..3 {
            sink.append(|b| {
                b.extend_from_slice(line(i).as_bytes());
                true
            });
        }
        sink.write_out(true);
        assert_eq!(sink.dropped(), 3);
        out.broken.store(false, Ordering::Relaxed);
        sink.append(|b| {
            b.extend_from_slice(b"after");
            true
        });
        sink.write_out(true);
        assert_eq!(out.lines(), ["after"]);
    }

    #[test]
    fn the_writer_thread_writes_a_partial_batch_within_the_flush_interval() {
        let out = Recorder::default();
        let sink = Arc::new(Sink::new(Box::new(out.clone()), MAX_QUEUED));
        let runner = Arc::clone(&sink);
        std::thread::spawn(move || runner.run());
        let appended = Instant::now();
        sink.append(|b| {
            b.extend_from_slice(b"one line");
            true
        });
        let deadline = appended + Duration::from_secs(10);
        while out.lines().is_empty() {
            assert!(Instant::now() < deadline, "the line was not written");
            std::thread::yield_now();
        }
        assert_eq!(out.lines(), ["one line"]);
    }
}
