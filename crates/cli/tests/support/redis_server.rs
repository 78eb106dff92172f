//! A throwaway `redis-server` process on a free loopback port, killed on drop:
//! in memory only, or durable (AOF, fsync on every write) for tests that kill
//! and restart it. `scripts/test` installs redis-server when missing.
//! Included with `#[path]` by the tests that need it, so the shared harness
//! (`support/mod.rs`) stays unchanged for every other test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    durable: bool,
    // Redis may still want a working directory even with persistence off;
    // a durable server keeps its AOF here across restarts.
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// AOF on with `appendfsync always`: a write Redis acknowledged survives
    /// a SIGKILL of the server.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A free port can be taken by another test between bind and spawn: retry.
        for _ in 0..20 {
            let port = free_port();
            if let Some(child) = spawn(dir.path(), port, durable) {
                return Self {
                    child,
                    port,
                    durable,
                    dir,
                };
            }
        }
        panic!(
            "redis-server did not start on any free port (is it installed? scripts/test installs it)"
        );
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new process on the same port and directory (a durable one reloads
    /// its AOF). Panics if the port stays taken.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if let Some(child) = spawn(self.dir.path(), self.port, self.durable) {
                self.child = child;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `None` if the server exited (port taken) or never answered PING.
fn spawn(dir: &std::path::Path, port: u16, durable: bool) -> Option<Child> {
    let persistence: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(persistence)
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (is it installed? scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        if answers_as(port, child.id()) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// This very process answers on `port` (not another test's server that took
/// the port first): `INFO server` names its pid, and it answers PING.
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"INFO server\r\nPING\r\n").is_err() {
        return false;
    }
    let wanted = format!("process_id:{pid}\r\n");
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if text.starts_with('-') {
            return false;
        }
        if text.contains(&wanted) && text.ends_with("+PONG\r\n") {
            return true;
        }
    }
    false
}
