//! A real `redis-server` process on a free loopback port, killed on drop.
//! `scripts/test` installs redis-server when it is missing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    durable: bool,
    // Keeps the scratch dir of a throwaway server alive as long as the server.
    _scratch: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A throwaway server: nothing written to disk.
    pub fn start() -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_owned();
        let mut server = Self::spawn_on_free_port(&dir, false);
        server._scratch = Some(scratch);
        server
    }

    /// A server with AOF on and fsynced before every reply, keeping its data in `dir`.
    pub fn start_durable(dir: &Path) -> Self {
        Self::spawn_on_free_port(dir, true)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash: no shutdown, no final save.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again (same dir and persistence) on the same
    /// port, or on another free one if that was taken meanwhile.
    pub fn restart(&mut self) {
        self.kill_hard();
        let mut port = self.port;
        for _ in 0..20 {
            if let Some(child) = spawn(&self.dir, port, self.durable) {
                self.child = child;
                self.port = port;
                return;
            }
            port = free_port();
        }
        panic!("redis-server did not restart");
    }

    fn spawn_on_free_port(dir: &Path, durable: bool) -> Self {
        for _ in 0..20 {
            let port = free_port();
            if let Some(child) = spawn(dir, port, durable) {
                return Self {
                    child,
                    port,
                    dir: dir.to_owned(),
                    durable,
                    _scratch: None,
                };
            }
        }
        panic!(
            "redis-server did not start on any free port (is it installed? scripts/test installs it)"
        );
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

/// Starts redis-server on `port` and waits for PING; `None` if it exited
/// (the port was taken) or never answered.
fn spawn(dir: &Path, port: u16, durable: bool) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    if durable {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (is it installed? scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        // PING answers only once the AOF is loaded.
        if answers(port, child.id()) && pong(port) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Whether this very process answers on `port` (not another test's server
/// that took the port first): INFO names the server's pid.
fn answers(port: u16, pid: u32) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"INFO server\r\n").is_err() {
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
        if text.contains(&wanted) {
            return true;
        }
        if text.starts_with('-') {
            return false;
        }
    }
    false
}

fn pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
