//! Step output on its way to events: split into lines per stream, secrets masked (also when a
//! secret arrives split across two writes), partial lines flushed after a pause, and a per-run cap
//! that keeps the head and the tail of the output and records what was dropped in between.

use crate::run_writer::{RunWriter, WriteError};
use runlane_core::model::{NewEvent, Stream};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// A line longer than this is cut into pieces.
const MAX_LINE: usize = 64 * 1024;
const MASK: &str = "***";

/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// How many trailing bytes of `pending` could be the start of a secret: held back when a
    /// partial line is flushed, so the secret is masked once the rest of it arrives.
    fn risky_suffix(&self, pending: &[u8]) -> usize {
        let mut keep = 0;
        for s in &self.secrets {
            let s = s.as_bytes();
            for k in (keep + 1..s.len().min(pending.len() + 1)).rev() {
                if pending.ends_with(&s[..k]) {
                    keep = k;
                    break;
                }
            }
        }
        keep
    }
}

/// The run-wide output budget: the head is written as it comes; past it, each step keeps a tail.
#[derive(Debug)]
struct Budget {
    head_left: usize,
    tail_cap: usize,
}

/// The output side of one run; hands out a sink per step.
#[derive(Debug, Clone)]
pub struct RunOutput {
    writer: RunWriter,
    masker: Arc<Masker>,
    budget: Arc<Mutex<Budget>>,
    partial_flush: Duration,
}

impl RunOutput {
    /// `cap_bytes`: output kept per run, half for the head and half for each step's tail.
    pub fn new(writer: RunWriter, masker: Masker, cap_bytes: usize, partial_flush: Duration) -> Self {
        let budget = Budget { head_left: cap_bytes / 2, tail_cap: cap_bytes / 2 };
        RunOutput { writer, masker: Arc::new(masker), budget: Arc::new(Mutex::new(budget)), partial_flush }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    pub fn writer(&self) -> &RunWriter {
        &self.writer
    }

    pub fn for_step(&self, step: i32) -> OutputSink {
        OutputSink { run: self.clone(), step, state: Arc::new(Mutex::new(StepState::default())) }
    }
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    since: Option<Instant>,
}

#[derive(Debug, Default)]
struct StepState {
    pending: [Pending; 2],
    tail: VecDeque<(Stream, String)>,
    tail_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// Where one step's output goes. Cheap to clone; both streams may be written concurrently.
#[derive(Debug, Clone)]
pub struct OutputSink {
    run: RunOutput,
    step: i32,
    state: Arc<Mutex<StepState>>,
}

fn idx(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OutputSink {
    /// Reads `reader` to its end, writing its lines; a partial line is flushed after a pause.
    pub async fn pump(&self, stream: Stream, mut reader: impl AsyncRead + Unpin) -> Result<(), WriteError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(self.run.partial_flush, reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return self.end_stream(stream).await,
                Ok(Ok(n)) => self.write(stream, &buf[..n]).await?,
                Err(_) => self.flush_partial(stream).await?,
            }
        }
    }

    /// Takes a chunk of a stream (split anywhere).
    pub async fn write(&self, stream: Stream, chunk: &[u8]) -> Result<(), WriteError> {
        let lines = {
            let mut st = self.lock();
            let p = &mut st.pending[idx(stream)];
            p.bytes.extend_from_slice(chunk);
            let mut lines = Vec::new();
            while let Some(nl) = p.bytes.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = p.bytes.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(line);
            }
            while p.bytes.len() > MAX_LINE {
                lines.push(p.bytes.drain(..MAX_LINE).collect());
            }
            p.since = if p.bytes.is_empty() { None } else { p.since.or(Some(Instant::now())) };
            lines
        };
        for line in lines {
            self.emit(stream, &line).await?;
        }
        Ok(())
    }

    /// Writes a whole line (executors' own notes, e.g. an HTTP status line).
    pub async fn line(&self, stream: Stream, text: &str) -> Result<(), WriteError> {
        self.emit(stream, text.as_bytes()).await
    }

    /// Flushes a partial line that has waited, keeping back what could be the start of a secret.
    pub async fn flush_partial(&self, stream: Stream) -> Result<(), WriteError> {
        let piece = {
            let mut st = self.lock();
            let p = &mut st.pending[idx(stream)];
            let waited = p.since.is_some_and(|t| t.elapsed() >= self.run.partial_flush);
            if !waited {
                return Ok(());
            }
            let keep = self.run.masker.risky_suffix(&p.bytes);
            let piece: Vec<u8> = p.bytes.drain(..p.bytes.len() - keep).collect();
            p.since = if p.bytes.is_empty() { None } else { Some(Instant::now()) };
            piece
        };
        if piece.is_empty() { Ok(()) } else { self.emit(stream, &piece).await }
    }

    /// The stream ended: whatever is pending is its last line.
    pub async fn end_stream(&self, stream: Stream) -> Result<(), WriteError> {
        let rest = std::mem::take(&mut self.lock().pending[idx(stream)]).bytes;
        if rest.is_empty() { Ok(()) } else { self.emit(stream, &rest).await }
    }

    /// The step ended: pending lines, then the kept tail (after a note of what was dropped), and
    /// waits until all of it is written.
    pub async fn finish(&self) -> Result<(), WriteError> {
        self.close().await?;
        self.run.writer.flush().await
    }

    /// The step ended: pending lines, then the kept tail (after a note of what was dropped), handed
    /// to the run's writer without waiting (the step's finish is written with them).
    pub async fn close(&self) -> Result<(), WriteError> {
        self.end_stream(Stream::Stdout).await?;
        self.end_stream(Stream::Stderr).await?;
        let (tail, dropped_lines, dropped_bytes) = {
            let mut st = self.lock();
            let tail: Vec<_> = st.tail.drain(..).collect();
            st.tail_bytes = 0;
            (tail, std::mem::take(&mut st.dropped_lines), std::mem::take(&mut st.dropped_bytes))
        };
        if dropped_lines > 0 {
            let note = NewEvent {
                kind: "step.output_truncated".into(),
                step: Some(self.step),
                stream: None,
                body: None,
                data: Some(serde_json::json!({"dropped_lines": dropped_lines, "dropped_bytes": dropped_bytes})),
            };
            self.run.writer.send(note).await?;
        }
        for (stream, text) in tail {
            self.run.writer.send(NewEvent::output(self.step, stream, text)).await?;
        }
        Ok(())
    }

    async fn emit(&self, stream: Stream, raw: &[u8]) -> Result<(), WriteError> {
        // PostgreSQL text cannot hold NUL: show it as U+FFFD rather than lose the line.
        let text = self.run.masker.mask(&String::from_utf8_lossy(raw).replace('\0', "\u{FFFD}"));
        let in_head = {
            let mut budget = self.run.budget.lock().unwrap_or_else(|p| p.into_inner());
            if budget.head_left >= text.len() {
                budget.head_left -= text.len();
                true
            } else {
                budget.head_left = 0;
                let tail_cap = budget.tail_cap;
                drop(budget);
                let mut st = self.lock();
                st.tail_bytes += text.len();
                st.tail.push_back((stream, text.clone()));
                while st.tail_bytes > tail_cap {
                    let Some((_, old)) = st.tail.pop_front() else { break };
                    st.tail_bytes -= old.len();
                    st.dropped_lines += 1;
                    st.dropped_bytes += old.len() as u64;
                }
                false
            }
        };
        if in_head {
            self.run.writer.send(NewEvent::output(self.step, stream, text)).await?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StepState> {
        // A panic while holding this lock leaves plain buffers behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_secret_first() {
        let m = Masker::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(m.mask("x abcdef y abc"), "x *** y ***");
    }

    #[test]
    fn holds_back_what_could_start_a_secret() {
        let m = Masker::new(["hunter2".to_string()]);
        assert_eq!(m.risky_suffix(b"password: hun"), 3);
        assert_eq!(m.risky_suffix(b"password: h"), 1);
        assert_eq!(m.risky_suffix(b"password: x"), 0);
        assert_eq!(m.risky_suffix(b"hunter2"), 0, "a whole secret is masked, not held");
    }
}
