//! Container logs as `kubectl logs` wants them: read from the CRI-format files the shims write
//! (`<time> <stream> <P|F> <text>`, one file per container attempt, rotated once), with
//! tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, previous and follow.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use runtime::containers::ShimStatus;
use tokio::sync::mpsc;

use crate::Shared;
use crate::streams::Output;

/// How often a followed log is checked for more.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<Timestamp>,
}

impl LogOptions {
    pub fn from_query(q: &[(String, String)]) -> LogOptions {
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let flag = |k: &str| matches!(get(k), Some("true" | "1"));
        let since = match (get("sinceSeconds"), get("sinceTime")) {
            (Some(s), _) => s.parse::<i64>().ok().and_then(|s| {
                Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .ok()
            }),
            (None, Some(t)) => t.parse().ok(),
            _ => None,
        };
        LogOptions {
            follow: flag("follow"),
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            tail_lines: get("tailLines").and_then(|v| v.parse().ok()),
            limit_bytes: get("limitBytes").and_then(|v| v.parse().ok()),
            since,
        }
    }
}

/// One record of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    /// A piece of a longer line (`P`) rather than the end of one (`F`).
    pub partial: bool,
    pub text: &'a [u8],
}

pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        stream,
        partial: tag.split(|b| *b == b':').next() == Some(b"P"),
        text,
    })
}

/// The timestamp form `kubectl logs --timestamps` shows.
fn display_time(t: &str) -> String {
    match t.parse::<Timestamp>() {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string(),
        Err(_) => t.to_string(),
    }
}

/// Render records as the client sees them; `at_line_start` carries over between calls.
fn render(r: &Record<'_>, opts: &LogOptions, at_line_start: &mut bool, out: &mut Vec<u8>) {
    if opts.timestamps && *at_line_start {
        out.extend_from_slice(display_time(r.time).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(r.text);
    if !r.partial {
        out.push(b'\n');
    }
    *at_line_start = !r.partial;
}

fn wanted(r: &Record<'_>, opts: &LogOptions) -> bool {
    match (&opts.since, r.time.parse::<Timestamp>()) {
        (Some(since), Ok(t)) => t >= *since,
        _ => true,
    }
}

/// The files of one attempt, oldest first.
pub fn attempt_files(dir: &Path, attempt: i32) -> Vec<PathBuf> {
    [format!("{attempt}.log.1"), format!("{attempt}.log")]
        .into_iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect()
}

/// Attempts with a log in `dir` (`<attempt>.log`), highest first.
pub fn attempts(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Everything the attempt logged so far, filtered, tailed and limited.
pub fn read_all(files: &[PathBuf], opts: &LogOptions) -> io::Result<Vec<u8>> {
    // Whole lines, so that tailLines counts what the user sees.
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut at_start = true;
    for f in files {
        let mut r = BufReader::new(File::open(f)?);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            if r.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            if !raw.ends_with(b"\n") {
                // Being written right now; the follower picks it up.
                break;
            }
            let Some(rec) = parse(&raw) else { continue };
            if !wanted(&rec, opts) {
                continue;
            }
            render(&rec, opts, &mut at_start, &mut current);
            if !rec.partial {
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out = lines.concat();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit);
    }
    Ok(out)
}

/// Where a reader is in a file that may be rotated under it.
struct Cursor {
    path: PathBuf,
    file: File,
    inode: u64,
    pending: Vec<u8>,
}

impl Cursor {
    fn open_at_end(path: &Path) -> io::Result<Cursor> {
        let mut file = File::open(path)?;
        let inode = file.metadata()?.ino();
        // Start after the last complete record (read_all stopped there too).
        let len = file.seek(SeekFrom::End(0))?;
        let mut pending = Vec::new();
        if len > 0 {
            let back = len.min(64 * 1024);
            file.seek(SeekFrom::Start(len - back))?;
            let mut tail = vec![0u8; back as usize];
            file.read_exact(&mut tail)?;
            if let Some(nl) = tail.iter().rposition(|b| *b == b'\n') {
                pending.extend_from_slice(&tail[nl + 1..]);
            } else if back == len {
                pending = tail;
            }
        }
        Ok(Cursor {
            path: path.to_path_buf(),
            file,
            inode,
            pending,
        })
    }

    /// Complete records appended since the last call.
    fn read_new(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        // Rotated: finish the old file, then carry on in the new one from its start.
        if let Ok(m) = std::fs::metadata(&self.path)
            && m.ino() != self.inode
        {
            let mut rest = Vec::new();
            self.file.read_to_end(&mut rest)?;
            buf.extend_from_slice(&rest);
            self.file = File::open(&self.path)?;
            self.inode = m.ino();
            self.file.read_to_end(&mut buf)?;
        }
        self.pending.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            out.push(self.pending.drain(..=nl).collect());
        }
        Ok(out)
    }
}

fn running(shared: &Shared, id: &str) -> bool {
    matches!(shared.runtime.status(id), Some(ShimStatus::Running { .. }))
}

/// Stream a log: what is there, then (with follow) what comes while container `id` runs.
pub(crate) async fn stream(
    shared: Arc<Shared>,
    id: String,
    files: Vec<PathBuf>,
    opts: LogOptions,
    tx: mpsc::Sender<Bytes>,
) {
    let initial = {
        let (files, opts) = (files.clone(), opts.clone());
        tokio::task::spawn_blocking(move || read_all(&files, &opts)).await
    };
    let Ok(Ok(initial)) = initial else { return };
    let mut sent = initial.len();
    let mut at_start = initial.is_empty() || initial.ends_with(b"\n");
    if !initial.is_empty() && tx.send(Bytes::from(initial)).await.is_err() {
        return;
    }
    if !opts.follow || opts.limit_bytes.is_some_and(|l| sent >= l) {
        return;
    }
    let Some(last) = files.last() else { return };
    let Ok(mut cursor) = Cursor::open_at_end(last) else {
        return;
    };
    loop {
        let alive = running(&shared, &id);
        let records = match cursor.read_new() {
            Ok(r) => r,
            Err(_) => return,
        };
        let mut out = Vec::new();
        for raw in &records {
            if let Some(rec) = parse(raw)
                && wanted(&rec, &opts)
            {
                render(&rec, &opts, &mut at_start, &mut out);
            }
        }
        if let Some(limit) = opts.limit_bytes {
            out.truncate(limit.saturating_sub(sent));
        }
        sent += out.len();
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        if opts.limit_bytes.is_some_and(|l| sent >= l) || (!alive && records.is_empty()) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Stream what container `id` writes from now on to stdout/stderr channels, until it exits.
pub(crate) async fn follow_raw(
    shared: Arc<Shared>,
    id: String,
    log: PathBuf,
    out: mpsc::Sender<Output>,
) {
    let Ok(mut cursor) = Cursor::open_at_end(&log) else {
        return;
    };
    loop {
        let alive = running(&shared, &id);
        let Ok(records) = cursor.read_new() else {
            return;
        };
        for raw in &records {
            if let Some(rec) = parse(raw) {
                let mut text = rec.text.to_vec();
                if !rec.partial {
                    text.push(b'\n');
                }
                let msg = if rec.stream == "stderr" {
                    Output::Stderr(Bytes::from(text))
                } else {
                    Output::Stdout(Bytes::from(text))
                };
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        }
        if !alive && records.is_empty() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = out.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        p
    }

    #[test]
    fn records_parse() {
        let r = parse(b"2024-01-01T00:00:00.5Z stdout F hello world\n").unwrap();
        assert_eq!(
            (r.time, r.stream, r.partial, r.text),
            (
                "2024-01-01T00:00:00.5Z",
                "stdout",
                false,
                &b"hello world"[..]
            )
        );
        assert!(parse(b"2024-01-01T00:00:00Z stderr P ").unwrap().partial);
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn options_shape_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let old = write(
            dir.path(),
            "0.log.1",
            &["2024-01-01T00:00:01Z stdout F one"],
        );
        let cur = write(
            dir.path(),
            "0.log",
            &[
                "2024-01-01T00:00:02Z stdout F two",
                "2024-01-01T00:00:03Z stderr P thr",
                "2024-01-01T00:00:03.25Z stderr F ee",
                "2024-01-01T00:00:04Z stdout F four",
            ],
        );
        let files = vec![old, cur];
        let all = |o: LogOptions| String::from_utf8(read_all(&files, &o).unwrap()).unwrap();
        assert_eq!(all(LogOptions::default()), "one\ntwo\nthree\nfour\n");
        assert_eq!(
            all(LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            }),
            "three\nfour\n"
        );
        assert_eq!(
            all(LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            }),
            ""
        );
        assert_eq!(
            all(LogOptions {
                limit_bytes: Some(6),
                ..Default::default()
            }),
            "one\ntw"
        );
        assert_eq!(
            all(LogOptions {
                since: Some("2024-01-01T00:00:03Z".parse().unwrap()),
                ..Default::default()
            }),
            "three\nfour\n"
        );
        assert_eq!(
            all(LogOptions {
                timestamps: true,
                tail_lines: Some(2),
                ..Default::default()
            }),
            "2024-01-01T00:00:03.000000000Z three\n2024-01-01T00:00:04.000000000Z four\n"
        );
        assert_eq!(attempts(dir.path()), vec![0]);
        assert_eq!(attempt_files(dir.path(), 0).len(), 2);
    }

    #[test]
    fn a_cursor_follows_appends_and_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "0.log", &["t stdout F before"]);
        let mut c = Cursor::open_at_end(&p).unwrap();
        assert!(c.read_new().unwrap().is_empty());
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"t stdout F a\nt stdout F b").unwrap();
        assert_eq!(c.read_new().unwrap(), vec![b"t stdout F a\n".to_vec()]);
        f.write_all(b"\n").unwrap();
        std::fs::rename(&p, dir.path().join("0.log.1")).unwrap();
        write(dir.path(), "0.log", &["t stdout F c"]);
        assert_eq!(
            c.read_new().unwrap(),
            vec![b"t stdout F b\n".to_vec(), b"t stdout F c\n".to_vec()]
        );
    }
}
