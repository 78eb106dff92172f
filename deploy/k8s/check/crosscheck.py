"""Cross-checks the rendered Kubernetes manifests against the binary, the nginx
template and the Dockerfile: what schemas cannot see. Run by scripts/check-k8s,
which renders the overlays and validates the schemas first.

    crosscheck.py --binary target/debug/matchplane RENDERED.yaml...
"""

import argparse
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[3]
NGINX_TEMPLATE = REPO / "deploy/nginx/matchplane.conf.template"

# Where the Ingress deliberately differs from the nginx template, and why.
# The template serves one box, where the operator uses the admin API through
# the entry (crates/cli/tests/nginx.rs does); on Kubernetes the operator has
# `kubectl port-forward` and game servers reach the control plane over the
# cluster network, so admin and provisioning stay off the public path
# (docs/security.md, "Network policy").
INGRESS_ONLY_DENIED = {
    ("prefix", "/match/v1/admin"),
    ("prefix", "/match/v1/internal"),
    ("prefix", "/match/v1/provisioning"),
}
INGRESS_NOT_ROUTED = [re.compile(r"^/admin/$"), re.compile(r"^/gs/[^/]+/admin/$")]

# nginx's proxy_read_timeout / proxy_send_timeout and ingress-nginx's default.
DEFAULT_TIMEOUT_S = 60
# ingress-nginx's upstream-keepalive-timeout default: the control plane must
# keep idle connections longer, or the controller reuses closing ones.
INGRESS_KEEPALIVE_S = 60

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


def seconds(text):
    """`10m`, `30s`, `1h`, `500ms` or a plain number of seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text).strip())
    if not match:
        raise ValueError(f"not a duration: {text}")
    value, unit = float(match[1]), match[2] or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def byte_size(text):
    match = re.fullmatch(r"(\d+)([kKmM]?)", str(text).strip())
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]


class Help:
    """`matchplane <subcommand> --help`, read once per subcommand."""

    def __init__(self, binary):
        self.binary = binary
        self.texts = {}

    def text(self, subcommand):
        if subcommand not in self.texts:
            self.texts[subcommand] = subprocess.run(
                [self.binary, subcommand, "--help"], check=True, capture_output=True, text=True
            ).stdout
        return self.texts[subcommand]

    def has_flag(self, subcommand, flag):
        return re.search(rf"(?m)^\s+(?:-\w, )?{re.escape(flag)}\b", self.text(subcommand)) is not None

    def has_env(self, subcommand, name):
        return f"[env: {name}" in self.text(subcommand)

    def default(self, subcommand, flag):
        section = self.text(subcommand).split(f"{flag} ", 1)[1].split("\n      --", 1)[0]
        return re.search(r"\[default: ([^\]]+)\]", section)[1]


def load(paths):
    documents = {}
    for path in paths:
        documents[path] = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    return documents


def matchplane_containers(objects):
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if "matchplane" in container["image"]:
                yield obj, pod, container


def parse_args(args):
    """The subcommand and {flag: value} of a container's args (`--flag=value` or `--flag value`)."""
    subcommand, flags, pending = None, {}, None
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            flags[name] = value if _ else True
            pending = None if _ else name
        elif pending:
            flags[pending], pending = arg, None
        elif subcommand is None:
            subcommand = arg
    return subcommand, flags


def check_flags_and_env(objects, help_):
    for obj, _pod, container in matchplane_containers(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        subcommand, flags = parse_args(container.get("args", []))
        if subcommand not in ("control-plane", "game-server"):
            fail(f"{where}: first arg {subcommand!r} is no matchplane subcommand")
            continue
        for flag in flags:
            if not help_.has_flag(subcommand, flag):
                fail(f"{where}: `matchplane {subcommand} --help` has no {flag}")
        env = {e["name"]: e for e in container.get("env", [])}
        for name, entry in env.items():
            if name.startswith("MATCHPLANE_") and not help_.has_env(subcommand, name):
                fail(f"{where}: `matchplane {subcommand} --help` reads no env {name}")
            # Secrets come from Secrets, never as literal values in the spec.
            if re.search(r"TOKEN$|REDIS_URL$", name) and "value" in entry:
                fail(f"{where}: {name} is a literal; take it from a Secret")
        for flag in ("--admin-token", "--registration-token", "--redis-url", "--signing-key"):
            if flag in flags:
                fail(f"{where}: {flag} on the command line shows in `ps`; use the file or a Secret env")
        for arg in container.get("args", []):
            for reference in re.findall(r"\$\((\w+)\)", arg):
                if reference not in env:
                    fail(f"{where}: {arg} refers to $({reference}), which the container does not define")


def nginx_routes():
    """{(match, path): action} of the template's locations; `gs` routes keep `{name}`."""
    text = NGINX_TEMPLATE.read_text()
    routes = {}
    for found in re.finditer(r"\n\s*location\s+(=|~\*?)?\s*(\S+)\s*\{", text):
        modifier, path = found[1], found[2]
        depth, index = 1, found.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        body = text[found.end() : index]
        timeouts = {
            kind: seconds(value)
            for kind, value in re.findall(r"proxy_(read|send)_timeout\s+(\S+);", body)
        }
        timeouts = (timeouts.get("read", DEFAULT_TIMEOUT_S), timeouts.get("send", DEFAULT_TIMEOUT_S))
        proxy = re.search(r"proxy_pass\s+http://(\$?\w+)([^;$]*)", body)
        if path == "/" and not proxy:
            continue  # unknown paths: 404 on both sides
        if modifier and modifier.startswith("~"):
            named = re.fullmatch(r"\^(/[\w/]*/)\(\?<\w+>[^)]*\)\(\?<\w+>/\(([\w|]+)\)/\.\*\)\$", path)
            if not named or not proxy:
                fail(f"nginx template: location {path} has a form this check does not know")
                continue
            for part in named[2].split("|"):
                routes[("prefix", f"{named[1]}{{name}}/{part}/")] = ("proxy", "game-server:{name}", f"/{part}/", timeouts)
            continue
        match = "exact" if modifier == "=" else "prefix"
        if not proxy:
            routes[(match, path)] = ("deny",)
            continue
        backend = {"matchplane_control_plane": "control-plane", "matchplane_game": "game-server:seed"}[proxy[1]]
        routes[(match, path)] = ("proxy", backend, proxy[2] or path, timeouts)
    return routes


def ingress_routes(objects):
    routes = {}
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        name = ingress["metadata"]["name"]
        notes = ingress["metadata"].get("annotations", {})
        if ingress["spec"].get("ingressClassName") != "nginx":
            fail(f"Ingress/{name}: ingressClassName is not nginx")
        ann = lambda key, default=None: notes.get(f"nginx.ingress.kubernetes.io/{key}", default)  # noqa: E731
        denied = {"0.0.0.0/0", "::/0"} <= set(ann("denylist-source-range", "").split(","))
        timeouts = (seconds(ann("proxy-read-timeout", DEFAULT_TIMEOUT_S)), seconds(ann("proxy-send-timeout", DEFAULT_TIMEOUT_S)))
        rewrite = ann("rewrite-target")
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                path, kind = entry["path"], entry["pathType"]
                if kind == "ImplementationSpecific":
                    regex = re.fullmatch(r"(?P<lit>[^()]*)\((?P<inner>[^()]*?)\.\*\)", path)
                    if not regex or not rewrite or ann("use-regex") != "true":
                        fail(f"Ingress/{name}: path {path} has a form this check does not know")
                        continue
                    public, upstream = regex["lit"] + regex["inner"], rewrite.replace("$1", regex["inner"])
                    match = "prefix"
                else:
                    public, upstream = path, rewrite or path
                    match = "exact" if kind == "Exact" else "prefix"
                service = entry["backend"]["service"]["name"]
                backend = "control-plane" if service == "matchplane-control-plane" else f"game-server:{service}"
                routes[(match, public)] = ("deny",) if denied else ("proxy", backend, upstream, timeouts)
    return routes


def check_ingress_equals_nginx(objects):
    servers = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "gs"]
    if not servers:
        fail("no game-server StatefulSet `gs`")
        return
    pods = [f"gs-{i}" for i in range(servers[0]["spec"]["replicas"])]
    expected = {}
    for (match, path), action in nginx_routes().items():
        for pod in pods if "{name}" in path else [None]:
            key = (match, path.replace("{name}", pod or ""))
            if any(p.match(key[1]) for p in INGRESS_NOT_ROUTED):
                continue
            if action[0] == "proxy":
                # The seed-form backend is the first server, as render's default.
                backend = action[1].replace("{name}", pod or "").replace("seed", pods[0])
                expected[key] = ("proxy", backend, *action[2:])
            else:
                expected[key] = action
    for key in INGRESS_ONLY_DENIED:
        expected[key] = ("deny",)
    actual = ingress_routes(objects)
    for key in sorted(expected.keys() | actual.keys()):
        if expected.get(key) != actual.get(key):
            fail(f"route {key[0]} {key[1]}: nginx template says {expected.get(key)}, Ingress says {actual.get(key)}")


def check_game_servers(objects):
    by_kind = lambda kind: {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}  # noqa: E731
    services, ingresses, config = by_kind("Service"), by_kind("Ingress"), by_kind("ConfigMap").get("matchplane-entry")
    for obj, pod, container in matchplane_containers(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        subcommand, flags = parse_args(container["args"])
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if subcommand == "game-server":
            env = {e["name"]: e for e in container.get("env", [])}
            if flags.get("--connect-path-prefix") != "/gs/$(POD_NAME)" or flags.get("--server-id") != "$(POD_NAME)":
                fail(f"{where}: --server-id/--connect-path-prefix are not $(POD_NAME) and /gs/$(POD_NAME)")
            if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
                fail(f"{where}: POD_NAME is not the pod's name")
            drain = seconds(flags.get("--drain-timeout", "30s")) + seconds(flags.get("--shutdown-timeout", "10s"))
            if grace <= drain:
                fail(f"{where}: terminationGracePeriodSeconds {grace} does not outlast drain + shutdown ({drain:.0f} s)")
            for i in range(obj["spec"]["replicas"]):
                service = services.get(f"gs-{i}")
                if not service or service["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") != f"gs-{i}":
                    fail(f"{where}: pod gs-{i} has no Service gs-{i} selecting it")
                elif not service["spec"].get("publishNotReadyAddresses"):
                    fail(f"Service/gs-{i}: a draining pod would be cut off (publishNotReadyAddresses)")
        else:
            stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace <= stop:
                fail(f"{where}: terminationGracePeriodSeconds {grace} ends within the preStop sleep ({stop} s)")
            if seconds(flags.get("--idle-timeout", "60s")) <= INGRESS_KEEPALIVE_S:
                fail(f"{where}: --idle-timeout must exceed the controller's {INGRESS_KEEPALIVE_S} s upstream keep-alive")
            limit = byte_size(flags.get("--max-body-bytes", "65536"))
            for name in ("matchplane-match", "matchplane-realtime"):
                size = ingresses[name]["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
                if byte_size(size) != limit:
                    fail(f"Ingress/{name}: proxy-body-size {size} differs from the control plane's --max-body-bytes {limit}")
    if not config:
        fail("no ConfigMap matchplane-entry")
        return
    entry = config["data"]
    for name, ingress in ingresses.items():
        for rule in ingress["spec"]["rules"]:
            if rule.get("host") != entry["connect-host"]:
                fail(f"Ingress/{name}: host {rule.get('host')} is not the game servers' connect-host {entry['connect-host']}")
        tls = any(entry["connect-host"] in t.get("hosts", []) for t in ingress["spec"].get("tls", []))
        if tls != (entry["connect-scheme"] == "wss"):
            fail(f"Ingress/{name}: TLS {'on' if tls else 'off'} but game servers announce {entry['connect-scheme']}://")
    if entry["connect-port"] != ("443" if entry["connect-scheme"] == "wss" else "80"):
        fail(f"matchplane-entry: port {entry['connect-port']} is not the Ingress' port for {entry['connect-scheme']}")


def check_dockerfile(objects, help_):
    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    stages, current = [], None
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            current = []
            stages.append(current)
        elif current is not None:
            current.append((instruction["instruction"], instruction["value"]))
    if len(stages) < 2:
        fail("Dockerfile: not multi-stage")
        return
    builds = [v for stage in stages[:-1] for i, v in stage if i == "RUN"]
    if not any("cargo build --release -p matchplane-cli --locked" in v for v in builds):
        fail("Dockerfile: no build stage runs `cargo build --release -p matchplane-cli --locked`")
    final = stages[-1]
    values = lambda name: [v for i, v in final if i == name]  # noqa: E731
    users = values("USER")
    uid = users[-1].split(":")[0] if users else "0"
    if uid in ("0", "root"):
        fail("Dockerfile: the final stage runs as root")
    if not any("/health" in v for v in values("HEALTHCHECK")):
        fail("Dockerfile: no HEALTHCHECK on /health")
    if not any(v.startswith("--from=") for v in values("COPY")):
        fail("Dockerfile: the final stage copies nothing from the build stage")
    exposed = {int(p.split("/")[0]) for v in values("EXPOSE") for p in v.split()}
    for value in values("ENV"):
        for name in re.findall(r"(MATCHPLANE_\w+)=", value):
            if not any(help_.has_env(sub, name) for sub in ("control-plane", "game-server")):
                fail(f"Dockerfile: ENV {name} is read by no subcommand")
    for obj, pod, container in matchplane_containers(objects):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for port in container.get("ports", []):
            if port["containerPort"] not in exposed:
                fail(f"{where}: port {port['containerPort']} is not EXPOSEd by the Dockerfile")
        if str(pod.get("securityContext", {}).get("runAsUser")) != uid:
            fail(f"{where}: runAsUser is not the image's user {uid}")
    ignored = [
        line.strip().strip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in ("target", ".git"):
        if must not in ignored:
            fail(f".dockerignore: {must}/ is sent to the builder")
    # What the build reads: the workspace, and what include_str! pulls in.
    needed = ["Cargo.toml", "Cargo.lock", "crates/cli/Cargo.toml", "sdk/typescript/dist/index.js"]
    for path in needed:
        for pattern in ignored:
            if path == pattern or path.startswith(pattern + "/") or fnmatch.fnmatch(path, pattern):
                fail(f".dockerignore: {pattern} hides {path}, which the build needs")


def main():
    arguments = argparse.ArgumentParser()
    arguments.add_argument("--binary", required=True)
    arguments.add_argument("rendered", nargs="+")
    options = arguments.parse_args()
    help_ = Help(options.binary)
    rendered = load(options.rendered)
    for path, objects in rendered.items():
        print(f"  {Path(path).stem}: flags and env vars against `matchplane <subcommand> --help`")
        check_flags_and_env(objects, help_)
        print(f"  {Path(path).stem}: Ingress routes against deploy/nginx/matchplane.conf.template")
        check_ingress_equals_nginx(objects)
        print(f"  {Path(path).stem}: game-server identities, grace periods, entry host/TLS")
        check_game_servers(objects)
    print("  Dockerfile and .dockerignore against the manifests")
    check_dockerfile([o for objects in rendered.values() for o in objects], help_)
    if failures:
        print(f"{len(failures)} cross-check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("cross-checks passed")


if __name__ == "__main__":
    main()
