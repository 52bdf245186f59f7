//! `eligo serve` as child processes, as an operator runs it: to kill with `-9`.

use super::backends::{Backends, Kind};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child `eligo serve`, killed when dropped.
pub struct Process {
    child: Child,
    pub node: SocketAddr,
    pub worker: SocketAddr,
    pub admin: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now, on the loopback address.
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

/// Starts `eligo serve` with `roles` and waits for its listeners.
pub fn spawn(backends: &Backends, name: &str, roles: &str) -> Process {
    spawn_roles(backends, name, roles, true)
}

/// Starts `eligo serve` with `roles`; waits for its listeners if it serves.
pub fn spawn_roles(backends: &Backends, name: &str, roles: &str, serves: bool) -> Process {
    spawn_with(backends, name, roles, serves, &[])
}

/// [`spawn_roles`] with more environment variables.
pub fn spawn_with(backends: &Backends, name: &str, roles: &str, serves: bool, env: &[(&str, &str)]) -> Process {
    let plugins = backends.dir().join(format!("policies-{name}"));
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(super::plugin_path("seed-rules"), plugins.join("seed-rules.wasm")).expect("copy");
    let (node, worker, admin) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_eligo"))
        .arg("serve")
        .args(["--roles", roles, "--instance", name])
        .args(["--node-listen", &node.to_string(), "--worker-listen", &worker.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--plugins-dir")
        .arg(&plugins)
        .envs(backends.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // Embedded backends: the SQLite store and queue the test opened.
        .env("ELIGO_DATA_DIR", backends.dir())
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning eligo");
    let process = Process { child, node, worker, admin };
    let deadline = Instant::now() + Duration::from_secs(60);
    while serves && (std::net::TcpStream::connect(worker).is_err() || std::net::TcpStream::connect(node).is_err()) {
        assert!(Instant::now() < deadline, "eligo {name} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

impl Process {
    /// SIGKILL, now: nothing is flushed, acked or recorded.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes of one deployment of `kind`: one for every role embedded; an
/// edge and a back networked.
pub fn deployment(backends: &Backends, kind: Kind) -> Vec<Process> {
    match kind {
        Kind::Embedded => vec![spawn(
            backends,
            "all",
            "node-server,worker-server,job-processor,solution-processor,presence-processor",
        )],
        Kind::Networked => vec![
            spawn(backends, "edge", "node-server,worker-server"),
            spawn_roles(backends, "back", "job-processor,solution-processor,presence-processor", false),
        ],
    }
}
