//! A real nginx in front of the planes, configured by the repository's own
//! template (`deploy/nginx/render`): the single entry of the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long nginx may take to proxy its first request.
const WITHIN: Duration = Duration::from_secs(30);

pub struct Nginx {
    _child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Nginx {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("nginx is not installed; scripts/test installs it (apt-get install nginx-light)")
}

/// Renders deploy/nginx with the repository's own script and starts nginx in the foreground.
pub async fn start_nginx(port: u16, render_args: &[String]) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let render = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/render");
    let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
    args.extend_from_slice(render_args);
    let output = std::process::Command::new(&render)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "render: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(dir.path().join("matchplane.conf"), &output.stdout).unwrap();
    let d = dir.path().display();
    let main = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           include {d}/matchplane.conf;\n}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let nginx = Nginx {
        _child: child,
        dir,
        port,
    };
    // Ready once the control plane answers through it.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Ok(response) = reqwest::get(format!("{}/match/health", nginx.base())).await
            && response.status().is_success()
        {
            return nginx;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx never proxied /match/health"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
