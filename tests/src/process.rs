//! The bridge as a real child process, for the tests that kill it or send it
//! signals. Its log lines are collected so a test can wait for one.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::PATIENCE;

/// A running `xbridge run`.
pub struct BridgeProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: Arc<Notify>,
    /// The task collecting stderr; it ends at the process's last line.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl BridgeProcess {
    /// Starts `binary run --config <config>` with `env` added.
    pub fn start(binary: &Path, config: &Path, env: &[(&str, &str)]) -> BridgeProcess {
        Self::spawn(Command::new(binary), config, env)
    }

    /// [`BridgeProcess::start`] with the soft open-files limit (`RLIMIT_NOFILE`)
    /// at `soft`, the hard one unchanged: the 1024 systemd and Docker start
    /// processes with, whatever this test process has.
    pub fn start_with_open_files(
        binary: &Path,
        config: &Path,
        env: &[(&str, &str)],
        soft: u64,
    ) -> BridgeProcess {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let mut command = Command::new(binary);
        // SAFETY: between fork and exec the closure only makes the
        // getrlimit and setrlimit system calls, which allocate nothing and
        // take no lock.
        unsafe {
            command.pre_exec(move || {
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
                Ok(())
            });
        }
        Self::spawn(command, config, env)
    }

    fn spawn(mut command: Command, config: &Path, env: &[(&str, &str)]) -> BridgeProcess {
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,lapin=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the bridge binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Several bridges may run in one test: their lines tell them apart.
        let pid = child.id().unwrap_or_default();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let new_line = Arc::new(Notify::new());
        let reader = tokio::spawn({
            let lines = lines.clone();
            let new_line = new_line.clone();
            async move {
                let mut reader = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    eprintln!("[bridge {pid}] {line}");
                    lines.lock().expect("lines").push(line);
                    new_line.notify_waiters();
                }
                new_line.notify_waiters();
            }
        });
        BridgeProcess {
            child,
            lines,
            new_line,
            reader: Some(reader),
        }
    }

    /// Waits until `count` log lines contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, count: usize) {
        let wait = async {
            loop {
                let notified = self.new_line.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.count_logs(needle) >= count {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(PATIENCE, wait).await.is_err() {
            panic!(
                "waited {PATIENCE:?} for {count} log line(s) with {needle:?}; log:\n{}",
                self.logs().join("\n")
            );
        }
    }

    /// How many log lines so far contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Sends SIGHUP (`kill -HUP`), as an operator does after editing the
    /// configuration file.
    pub fn hangup(&self) {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }

    /// SIGKILL: no cleanup, no drain, like a crash or an OOM kill.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Sends SIGTERM, waits for the process to exit and for the last of its
    /// log lines; returns the exit status and every log line.
    pub async fn terminate_keeping_logs(mut self) -> (ExitStatus, Vec<String>) {
        let reader = self.reader.take().expect("the log reader runs");
        let lines = self.lines.clone();
        let status = self.terminate().await;
        tokio::time::timeout(PATIENCE, reader)
            .await
            .expect("the log reader ends with the process")
            .expect("the log reader");
        let lines = lines.lock().expect("lines").clone();
        (status, lines)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the bridge exits after SIGTERM")
            .expect("exit status")
    }
}
