//! `dynamo dev` and the client verbs as a new user meets them: the real binary, a real
//! three-member dev cluster, the CLI run with no flags in another directory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dynamo")
}

/// A running `dynamo dev`, stopped with SIGTERM (then SIGKILL) when dropped.
struct Dev {
    child: Option<Child>,
    dir: tempfile::TempDir,
    host: String,
    stdout: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Dev {
    /// Starts a three-member dev cluster on its own loopback address and waits until it
    /// prints its exports.
    fn start(base_port: u16) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        // Its own address per test process: tests elsewhere use 127.20-219.x.y.
        let host = format!("127.250.{}.1", std::process::id() % 250);
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("dev.err")).unwrap();
        let mut child = Command::new(binary())
            .args(["dev", "--nodes", "3", "--partitions", "32"])
            .arg(format!("--base-port={base_port}"))
            .arg(format!("--host={host}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg("--node-arg=--gossip-interval-ms=200")
            .arg("--node-arg=--hint-interval-ms=200")
            .envs(user_env(dir.path()))
            .env_remove("DYNAMO_ENDPOINT")
            .env_remove("DYNAMO_TOKEN")
            .env_remove("DYNAMO_CLIENT_CONFIG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Dev {
            child: Some(child),
            dir,
            host,
            stdout: Vec::new(),
            lines,
        };
        dev.wait_line("export DYNAMO_ENDPOINT=", Duration::from_secs(240));
        dev
    }

    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line {prefix:?} from dynamo dev within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout.join("\n"),
            self.stderr()
        );
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.err")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs the CLI as the user would in another shell: no DYNAMO_* variables, another
    /// working directory, the same home.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .envs(user_env(self.dir.path()))
            .env_remove("DYNAMO_ENDPOINT")
            .env_remove("DYNAMO_TOKEN")
            .env_remove("DYNAMO_CLIENT_CONFIG")
            .current_dir(self.dir.path().join("elsewhere"))
            .output()
            .unwrap()
    }

    /// The CLI, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "dynamo {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndev stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pid(&self, member: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join(format!("{member}.pid"))).ok()?;
        text.trim().parse().ok()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dynamo dev did not stop within 60 s of SIGTERM");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// HOME and XDG_CONFIG_HOME inside the test's directory, so the client config written
/// there is the only one the CLI can find.
fn user_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), dir.display().to_string()),
        (
            "XDG_CONFIG_HOME".into(),
            dir.join("config").display().to_string(),
        ),
    ]
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, signal);
}

/// The process state letter from /proc (`T` stopped, `S` sleeping, ...), if it exists.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// One cluster for the whole walk through (three members are slow to start on a shared
/// machine): find the cluster with no flags, then lose a member, keep serving, bring it
/// back; pause and resume one; stop the lot.
#[test]
fn a_new_user_starts_breaks_and_mends_a_dev_cluster() {
    let mut dev = Dev::start(7400);
    let host = dev.host.clone();
    // Progress while starting, one line per member.
    let progress = dev.stderr();
    for member in ["node-0", "node-1", "node-2"] {
        assert!(
            progress.contains(&format!("{member} up at http://{host}:")),
            "{progress}"
        );
    }
    assert!(
        dev.stdout.iter().any(|l| l
            == &format!(
                "export DYNAMO_ENDPOINT=http://{host}:7400 DYNAMO_TOKEN=dev-cluster-token-change-me"
            )),
        "{:?}",
        dev.stdout
    );
    assert!(dev.dir.path().join("config/dynamo/client.json").exists());

    // No flags: the client config leads the CLI to the cluster.
    dev.ok(&["put", "greeting", "hello"]);
    assert_eq!(dev.ok(&["get", "greeting"]), "hello");
    // An admin verb gets the token from the config too.
    dev.ok(&["members"]);
    // A flag wins over the config file: another endpoint, where nothing listens.
    let elsewhere = dev.cli(&["get", "greeting", "-e", "127.0.0.1:1"]);
    assert_eq!(
        elsewhere.status.code(),
        Some(4),
        "unreachable is exit code 4"
    );

    // Kill a member: it is reported with how it died, the others keep serving.
    let node2 = dev.pid("node-2").expect("node-2's pid file");
    let killed = dev.ok(&["dev", "kill", "node-2"]);
    assert!(
        killed.contains("node-2 was killed by signal 9 (SIGKILL)"),
        "{killed}"
    );
    assert!(process_state(node2).is_none(), "node-2's process is gone");
    assert!(dev.pid("node-2").is_none(), "its pid file is removed");
    assert!(dev.stderr().contains("node-2 was killed by signal 9"));
    let node1 = format!("http://{host}:7401");
    dev.ok(&["put", "after-kill", "still-here"]);
    assert_eq!(dev.ok(&["get", "after-kill", "-e", &node1]), "still-here");
    let refused = dev.cli(&["dev", "kill", "node-2"]);
    assert!(!refused.status.success(), "a member that is not running");

    // Start it again: it answers, and reads through it see the write it missed.
    let started = dev.ok(&["dev", "start", "node-2"]);
    assert!(started.contains("node-2 is up"), "{started}");
    let node2_http = format!("http://{host}:7402");
    assert_eq!(
        dev.ok(&["get", "after-kill", "-e", &node2_http]),
        "still-here"
    );
    // Ready once gossip has reached it again, which may take a few rounds.
    wait_until("node-2 ready", Duration::from_secs(60), || {
        dev.cli(&["ping", "-e", &node2_http]).status.success()
    });

    // Pause and resume: the process is stopped (T), then runs again.
    let node1_pid = dev.pid("node-1").unwrap();
    dev.ok(&["dev", "pause", "node-1"]);
    assert_eq!(process_state(node1_pid), Some('T'));
    dev.ok(&["dev", "resume", "node-1"]);
    wait_until("node-1 runs again", Duration::from_secs(10), || {
        process_state(node1_pid).is_some_and(|s| s != 'T')
    });
    wait_until("node-1 ready", Duration::from_secs(60), || {
        dev.cli(&["ping", "-e", &node1]).status.success()
    });

    // A clean stop is reported as an exit with code 0.
    let stopped = dev.ok(&["dev", "stop", "node-1"]);
    assert!(stopped.contains("node-1 exited with code 0"), "{stopped}");

    assert!(dev.stop().success(), "{}", dev.stderr());
    for member in ["node-0", "node-2"] {
        assert!(dev.pid(member).is_none(), "{member}'s pid file is removed");
    }
}
