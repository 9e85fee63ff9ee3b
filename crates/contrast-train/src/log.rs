//! The run's own account: every line a run prints also goes, time-stamped by
//! elapsed seconds, to `run.log` in the run directory, so that a run followed
//! without a terminal (a batch job, `nohup`) can be read there.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Prints lines and appends them to `run.log`.
#[derive(Debug)]
pub struct RunLog {
    file: Option<Mutex<std::fs::File>>,
    started: Instant,
    /// Print nothing (the ranks other than 0 of a data-parallel run).
    silent: bool,
}

impl RunLog {
    /// Appends to `dir/run.log` (created when missing; a resumed run continues it).
    /// A log that can't be opened is reported once and the run goes on printing.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("run.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .inspect_err(|e| eprintln!("warning: {}: {e}; not logging to it", path.display()))
            .ok()
            .map(Mutex::new);
        Self {
            file,
            started: Instant::now(),
            silent: false,
        }
    }

    /// A log that only prints (no file).
    pub fn stdout_only() -> Self {
        Self {
            file: None,
            started: Instant::now(),
            silent: false,
        }
    }

    /// A log that neither prints nor writes (a data-parallel run speaks through
    /// rank 0 alone).
    pub fn silent() -> Self {
        Self {
            file: None,
            started: Instant::now(),
            silent: true,
        }
    }

    fn append(&self, line: &str) {
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let t = self.started.elapsed().as_secs_f64();
            // A full disk must not stop training; the line was printed anyway.
            let _ = writeln!(f, "[{t:>9.1}s] {line}");
        }
    }

    /// Prints `line` to standard output and logs it.
    pub fn say(&self, line: impl AsRef<str>) {
        if self.silent {
            return;
        }
        println!("{}", line.as_ref());
        self.append(line.as_ref());
    }

    /// Prints `line` to standard error and logs it.
    pub fn warn(&self, line: impl AsRef<str>) {
        if self.silent {
            return;
        }
        eprintln!("{}", line.as_ref());
        self.append(line.as_ref());
    }
}
