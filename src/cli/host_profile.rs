//! `LOSA_HOST_PROFILE=<file>`: samples the host threads while a command runs and writes the
//! samples as folded stacks (`thread;outermost;...;innermost count`, one line per stack), the
//! input of flamegraph tools. For machines without perf: the time a decode step spends issuing
//! kernels is host time, and this says which functions take it.

use std::io::Write;

/// Samples per second and per thread of CPU time.
const FREQUENCY_HZ: i32 = 2000;

/// A running profile; dropping it without `finish` discards the samples.
pub struct HostProfile {
    guard: pprof::ProfilerGuard<'static>,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for HostProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostProfile")
            .field("path", &self.path)
            .finish()
    }
}

impl HostProfile {
    /// Starts sampling when `LOSA_HOST_PROFILE` names a file.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(path) = std::env::var_os("LOSA_HOST_PROFILE") else {
            return Ok(None);
        };
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY_HZ)
            // Unwinding through these while they hold locks can deadlock.
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("LOSA_HOST_PROFILE: cannot start the profiler: {e}"))?;
        Ok(Some(Self {
            guard,
            path: path.into(),
        }))
    }

    /// Writes the folded stacks.
    pub fn finish(self) -> Result<(), String> {
        let report = self
            .guard
            .report()
            .build()
            .map_err(|e| format!("LOSA_HOST_PROFILE: cannot build the report: {e}"))?;
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&self.path)?);
            for (frames, count) in &report.data {
                write!(out, "{}", frames.thread_name_or_id().replace(';', ":"))?;
                // pprof lists the innermost frame first; folded stacks start at the root.
                for frame in frames.frames.iter().rev() {
                    for symbol in frame.iter().rev() {
                        write!(out, ";{}", symbol.name().replace(';', ":"))?;
                    }
                }
                writeln!(out, " {count}")?;
            }
            out.flush()
        };
        write().map_err(|e| format!("LOSA_HOST_PROFILE: {}: {e}", self.path.display()))
    }
}
