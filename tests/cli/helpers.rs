//! Spawning the binary and reading what it said.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The single line printed on standard error (panics unless exactly one).
    pub fn line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {self:#?}"
        );
        lines[0]
    }

    /// Asserts a startup failure in `phase` with `code`; returns the line.
    pub fn failed(&self, phase: &str, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "exit code of {self:#?}");
        let line = self.line();
        let prefix = format!("startup failed in {phase}: ");
        assert!(
            line.starts_with(&prefix),
            "expected {prefix:?}…, got {line:?}"
        );
        assert!(line.contains("; hint: "), "no hint in {line:?}");
        line
    }
}

/// The binary run in `dir` with only `env` in its environment.
pub fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the binary to completion (at most 30 s).
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = command(dir, args, env).spawn().expect("spawn the binary");
    wait(child, Duration::from_secs(30))
}

/// Waits for `child` to exit, killing it after `limit`.
pub fn wait(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Sends SIGTERM to `child` (the drain) and waits for it to exit (at most
/// 30 s).
pub fn terminate(child: Child) -> Run {
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success());
    wait(child, Duration::from_secs(30))
}

/// Writes `contents` to `dir/name`, creating parent directories.
pub fn write(dir: &Path, name: &str, contents: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dirs");
    }
    std::fs::write(path, contents).expect("write file");
}

/// A file in PEM form with one block of `label` whose content is junk: the
/// right kind for the label checks, but not a parseable certificate or key.
pub fn pem(label: &str) -> String {
    format!("-----BEGIN {label}-----\nMIIBszCCAVmgAwIBAgIU\n-----END {label}-----\n")
}

/// Whether this process can write where permissions say it may not (root).
pub fn permissions_are_bypassed(dir: &Path) -> bool {
    std::fs::write(dir.join(".probe"), b"x").is_ok()
}
