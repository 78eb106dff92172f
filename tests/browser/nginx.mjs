// A real nginx in front of the planes, configured by the repository's own
// template (deploy/nginx/render), as crates/cli/tests/nginx.rs does in Rust:
// `/match/*` → the control plane, `/game/*` → the game server.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { waitUntil } from "./planes.mjs";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** A loopback port that was free a moment ago (for a process that must know its port first). */
export function freePort() {
  return new Promise((resolvePort, rejectPort) => {
    const server = createServer();
    server.once("error", rejectPort);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

function nginxBinary() {
  const found = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((path) => existsSync(path));
  if (!found) throw new Error("nginx is not installed; scripts/test installs it (apt-get install nginx-light)");
  return found;
}

/**
 * Starts nginx on 127.0.0.1:`port` in the foreground with the rendered template and
 * resolves once `/match/health` answers through it.
 */
export async function startNginx({ port, controlPlane, gameServer }) {
  const dir = mkdtempSync(join(tmpdir(), "matchplane-nginx-"));
  const include = execFileSync(
    join(repo, "deploy/nginx/render"),
    ["--listen", `127.0.0.1:${port}`, "--control-plane", controlPlane, "--game-server", gameServer],
    { encoding: "utf8" },
  );
  writeFileSync(join(dir, "matchplane.conf"), include);
  const temp = (name) => `${name}_temp_path ${dir}/${name === "client_body" ? "body" : name};`;
  writeFileSync(
    join(dir, "nginx.conf"),
    [
      "daemon off;",
      "user root;",
      "worker_processes 1;",
      `pid ${dir}/nginx.pid;`,
      `error_log ${dir}/error.log info;`,
      "events { worker_connections 1024; }",
      "http {",
      `  access_log ${dir}/access.log;`,
      ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((name) => `  ${temp(name)}`),
      `  include ${dir}/matchplane.conf;`,
      "}",
      "",
    ].join("\n"),
  );
  const child = spawn(nginxBinary(), ["-c", join(dir, "nginx.conf"), "-p", dir], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise((resolveExit) => child.once("exit", resolveExit));
  const base = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitUntil(async () => {
      try {
        return (await fetch(`${base}/match/health`)).ok;
      } catch {
        return false;
      }
    }, "nginx proxying /match/health");
  } catch (error) {
    await stop();
    throw error;
  }
  return { base, stop };
}
