//! A plugin's child process: started on first use, greeted with the protocol's hello, then asked one
//! request at a time, each answer awaited until a deadline. Its stdout is read by a thread that forwards
//! lines, so a silent child is noticed at the deadline instead of blocking the run. Dropping it closes the
//! child's stdin and, if it has not exited within a grace period, kills it.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;

use crate::protocol;

/// How the child is started and how long it may take; the TOML keys of every command plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSettings {
    /// Program and arguments, e.g. `["python3", "rewards.py"]`; a relative program path is taken from the
    /// working directory, a bare name from `PATH`.
    pub command: Vec<String>,
    /// Seconds the child has to answer one request (default 300).
    #[serde(default = "ChildSettings::default_timeout")]
    pub timeout_seconds: f64,
    /// Seconds the child has to start and answer the hello (default 60: imports can be slow).
    #[serde(default = "ChildSettings::default_startup")]
    pub startup_timeout_seconds: f64,
    /// Extra environment variables for the child.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The child's working directory (default: the host's).
    pub cwd: Option<PathBuf>,
}

impl ChildSettings {
    fn default_timeout() -> f64 {
        300.0
    }

    fn default_startup() -> f64 {
        60.0
    }

    /// Errors in the settings themselves, before anything is started: an empty command, a program that
    /// cannot be found, deadlines that are not positive.
    pub fn check(&self) -> Result<(), String> {
        let program = self.command.first().ok_or("`command` is empty: give the program and its arguments, e.g. [\"python3\", \"rewards.py\"]")?;
        for (key, v) in [("timeout_seconds", self.timeout_seconds), ("startup_timeout_seconds", self.startup_timeout_seconds)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`{key}` must be a positive number of seconds, got {v}"));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(format!("`cwd` {} is not a directory", cwd.display()));
            }
        }
        if find_program(program, self.cwd.as_deref()).is_none() {
            return Err(format!("`command`: program `{program}` not found (not a file, and not on PATH)"));
        }
        Ok(())
    }
}

/// Whether `program` names an existing file (a path) or one on `PATH` (a bare name).
fn find_program(program: &str, cwd: Option<&std::path::Path>) -> Option<PathBuf> {
    let path = PathBuf::from(program);
    if path.components().count() > 1 || path.is_absolute() {
        let full = match cwd {
            Some(dir) if path.is_relative() => dir.join(&path),
            _ => path,
        };
        return full.is_file().then_some(full);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A running plugin process.
pub struct ChildProcess {
    /// What the plugin is, for messages: "command `python3 rewards.py`".
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    timeout: Duration,
    next_id: u64,
    /// The helper's directory, removed with the process.
    helper_dir: Option<PathBuf>,
}

impl ChildProcess {
    /// Starts the child for plugin `kind` ("reward", "environment") and waits for its `ready`.
    pub fn start(settings: &ChildSettings, kind: &str) -> Result<Self, String> {
        settings.check()?;
        let what = format!("command `{}`", settings.command.join(" "));
        let helper_dir = write_helper().map_err(|e| format!("{what}: writing the Python helper: {e}"))?;
        let mut cmd = Command::new(&settings.command[0]);
        cmd.args(&settings.command[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let python_path = match std::env::var_os("PYTHONPATH") {
            Some(existing) => {
                let mut paths = vec![helper_dir.clone()];
                paths.extend(std::env::split_paths(&existing));
                std::env::join_paths(paths).map_err(|e| format!("{what}: PYTHONPATH: {e}"))?
            }
            None => helper_dir.clone().into_os_string(),
        };
        cmd.env("PYTHONPATH", python_path).env("HOST_PLUGIN_PROTOCOL", protocol::VERSION.to_string());
        cmd.envs(&settings.env);
        if let Some(cwd) = &settings.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|e| format!("{what}: cannot start: {e}"))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => return Err(format!("{what}: no pipes to the child")),
        };
        let (send, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("plugin-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let stop = line.is_err();
                    if send.send(line).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| format!("{what}: reader thread: {e}"))?;
        let mut process = ChildProcess {
            what,
            child,
            stdin: Some(stdin),
            lines,
            timeout: Duration::from_secs_f64(settings.timeout_seconds),
            next_id: 1,
            helper_dir: Some(helper_dir),
        };
        process.send(&protocol::hello(kind))?;
        let answer = process.receive(Duration::from_secs_f64(settings.startup_timeout_seconds), "startup_timeout_seconds")?;
        protocol::check_ready(&answer).map_err(|e| process.failed(&e))?;
        Ok(process)
    }

    /// What the plugin is, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Sends `message` (a JSON object; its `id` is set here) and returns the answer's `key` when the answer
    /// is of type `expected`.
    pub fn request(&mut self, mut message: Value, expected: &str, key: &str) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(object) = message.as_object_mut() {
            object.insert("id".into(), id.into());
        }
        self.send(&message)?;
        let answer = self.receive(self.timeout, "timeout_seconds")?;
        protocol::payload(&answer, expected, id, key).cloned().map_err(|e| self.failed(&e))
    }

    fn send(&mut self, message: &Value) -> Result<(), String> {
        let mut line = message.to_string();
        line.push('\n');
        let result = match &mut self.stdin {
            Some(stdin) => stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin already closed")),
        };
        result.map_err(|e| self.failed(&format!("could not be written to ({e})")))
    }

    /// The next line as a JSON object, waiting at most `limit` (named by `key` in the error).
    fn receive(&mut self, limit: Duration, key: &str) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        let line = match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.failed(&format!("stdout could not be read ({e})"))),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                return Err(format!("{}: no answer within {} s (`{key}`); the process was killed", self.what, limit.as_secs_f64()));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.failed("exited without answering")),
        };
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.is_object() => Ok(v),
            _ => {
                let shown: String = line.chars().take(200).collect();
                Err(self.failed(&format!("wrote a line that is not a protocol message (JSON object) to stdout: {shown:?}; print to stderr instead")))
            }
        }
    }

    /// An error message naming the process, with its exit status when it has exited.
    fn failed(&mut self, what: &str) -> String {
        // A child that just closed stdout may still be exiting: give it a moment to report its status.
        let mut status = None;
        for _ in 0..20 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        match status {
            Some(s) => format!("{}: {what} (it exited with {s})", self.what),
            None => format!("{}: {what}", self.what),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // EOF on stdin asks the child to exit; it gets two seconds before it is killed.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = self.helper_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes the Python helper into a fresh directory of its own (one per child, so concurrent runs never race).
fn write_helper() -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("host-plugin-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(protocol::PYTHON_HELPER_FILE), protocol::PYTHON_HELPER)?;
    Ok(dir)
}
