#!/usr/bin/env python3
"""Runs the bridge exactly as deploy/ deploys it, so a broken config in deploy/ fails the tests.

For docker-compose.yml (Kafka and RabbitMQ) and the rendered Kubernetes overlays (kafka, rabbitmq)
it takes each service's or container's command, environment and mounted files (the compose
config files and volumes; the Kubernetes ConfigMaps and Secrets, with test values for the
Secrets), lays out a folder per container in which each mount target points at its source, and
runs the built binary with those arguments (container paths mapped into that folder). The
services' host names are mapped to 127.0.0.1 (scripts/services.sh); the brokers are the test
machine's (tansu for Kafka, RabbitMQ). Then, as the deployment would:
  * compose: the `setup` service's command makes the certificate and the secrets; the simulator,
    ingress and worker start and their own health checks (`tradecloud-bridge healthcheck`) must
    pass; the demo profile's sender fires webhooks at https://ingress:8443 (the certificate must
    cover `ingress`) and its "ERP" prints the delivered messages; a GET and a POST of this run's own
    order ids must arrive on the orders topic;
  * Kubernetes: the readiness and liveness probes must answer 200 on the ports they name; a POST
    must arrive on the orders topic.
Each process must stop with exit 0 on SIGTERM. Bounded: every wait has a deadline.

Usage: tests/deploy.py [path of the built tradecloud-bridge binary]
"""

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
IMAGE_BINARY = "/usr/local/bin/tradecloud-bridge"
EVENT = os.path.join(ROOT, "crates", "model", "tests", "fixtures", "event-lines-confirmed.json")
HOSTS = ["kafka", "rabbitmq", "simulator", "ingress", "ingress-rabbitmq",
         "kafka-kafka-bootstrap.kafka", "rabbitmq.rabbitmq"]
RUN = uuid.uuid4().hex[:8]
# The image's user (deploy/Dockerfile) and the pods' runAsUser/fsGroup: when the test runs as root,
# every process runs as this user, so file ownership and modes are tested as deployed.
BRIDGE_UID = 10001
AS_BRIDGE = os.geteuid() == 0


class Failure(Exception):
    pass


def wait_for(what, check, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - the condition is retried until the deadline
            last = e
        time.sleep(0.2)
    raise Failure(f"{what}: not within {seconds} s" + (f" (last error: {last})" if last else ""))


class Container:
    """A folder standing for one container's filesystem: each mount target is a link to its
    source; `map` turns container paths in arguments into paths in this folder."""

    def __init__(self, base, name, binary, mounts, uid=BRIDGE_UID):
        self.name = name
        self.root = os.path.join(base, name)
        # The container's own filesystem is not writable by its user (read-only root filesystem).
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        self.user = {"user": uid, "group": uid, "extra_groups": [uid]} if AS_BRIDGE else {}
        self.binary = binary
        self.targets = []
        for target, source in mounts:
            here = self.root + target
            os.makedirs(os.path.dirname(here), exist_ok=True)
            os.symlink(source, here)
            self.targets.append(target)
        self.procs = []

    def map(self, text):
        text = text.replace(IMAGE_BINARY, self.binary)
        if not self.targets:
            return text
        pattern = "|".join(re.escape(t) for t in sorted(self.targets, key=len, reverse=True))
        return re.sub(rf"(?<![\w./-])({pattern})", lambda m: self.root + m.group(1), text)

    def argv(self, entrypoint, command):
        # `docker-compose config` writes a literal `$` as `$$`; the container gets `$`.
        args = [self.map(a).replace("$$", "$") for a in (entrypoint or [IMAGE_BINARY]) + (command or [])]
        return args

    def run(self, argv, env, timeout=60):
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                           **self.user)
        if r.returncode != 0:
            raise Failure(f"{self.name}: {' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r.stdout

    def start(self, argv, env):
        log = open(os.path.join(os.path.dirname(self.root), f"{self.name}.log"), "w")
        p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, **self.user)
        self.procs.append((p, argv))
        return p

    def log(self):
        try:
            with open(os.path.join(os.path.dirname(self.root), f"{self.name}.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        """SIGTERM, then the exit code must be 0 (a graceful stop)."""
        for p, argv in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                code = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                raise Failure(f"{self.name}: did not stop within 60 s of SIGTERM")
            if code != 0:
                raise Failure(f"{self.name}: exited {code} on SIGTERM:\n{self.log()}")
        self.procs = []

    def kill(self):
        for p, _ in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []


@contextlib.contextmanager
def containers_in(prefix):
    """A folder for containers and their list: all stopped gracefully (exit 0 required) when the
    case ends, killed when it fails; the folder removed either way."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)
    containers = []
    try:
        yield base, containers
        for c in reversed(containers):
            c.stop()
    except BaseException:
        for c in containers:
            c.kill()
        raise
    finally:
        shutil.rmtree(base, ignore_errors=True)


def base_env(extra):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def https_context(ca_file):
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def send(url, ca_file, password, method="GET", body=None):
    headers = {"Authorization": "Basic " + base64.b64encode(f"tradecloud:{password}".encode()).decode()}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=https_context(ca_file), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def event_body(order_id):
    with open(EVENT) as f:
        event = json.load(f)
    event["orderEvent"]["orderId"] = order_id
    event["meta"]["messageId"] = str(uuid.uuid4())
    return json.dumps(event).encode()


def delivered(container, config, env, order_ids):
    """Waits until every order id is on the orders topic, read with `consume` as an ERP would."""
    def check():
        out = container.run([container.binary, "consume", "--config", config, "--topic", "orders",
                             "--idle-exit-secs", "3"], env, timeout=120)
        seen = set()
        for line in out.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            text = json.dumps(message)
            seen.update(o for o in order_ids if o in text)
        return seen == set(order_ids)
    wait_for(f"{container.name}: orders {order_ids} delivered", check, 90)


def healthcheck(container, svc, env):
    test = (svc.get("healthcheck") or {}).get("test") or []
    if not test or test[0] == "NONE":
        raise Failure(f"{container.name}: no health check")
    argv = [container.map(a) for a in (test[1:] if test[0] == "CMD" else ["/bin/sh", "-c"] + test[1:])]

    def check():
        if any(p.poll() is not None for p, _ in container.procs):
            raise Failure(f"{container.name} exited:\n{container.log()}")
        return subprocess.run(argv, env=env, capture_output=True, timeout=10, **container.user).returncode == 0
    try:
        wait_for(f"{container.name}: its health check {' '.join(test[1:])}", check, 60)
    except Failure as e:
        raise Failure(f"{e}\n{container.log()}")


# ---- docker-compose -------------------------------------------------------------------------

def compose_services(profiles):
    args = [a for p in profiles for a in ("--profile", p)]
    text = subprocess.run(["docker-compose", "-f", "docker-compose.yml", *args, "config"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(text)["services"]


def compose_container(base, name, svc, binary, volumes, uid=BRIDGE_UID):
    mounts = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):  # Compose v2's long form
            source, target = v["source"], v["target"]
        else:  # docker-compose 1.x: source:target[:mode]
            source, target = v.split(":")[:2]
        if not source.startswith("/"):
            if source not in volumes:
                # A new named volume takes the owner of the image's folder it is first mounted on
                # (deploy/Dockerfile makes those the bridge user's).
                volumes[source] = os.path.join(base, "volumes", source)
                os.makedirs(volumes[source], mode=0o755)
                if AS_BRIDGE:
                    os.chown(volumes[source], uid, uid)
            source = volumes[source]
        mounts.append((target, source))
    return Container(base, name, binary, mounts, uid)


def ensure_rabbitmq_user(user, password):
    """What the rabbitmq service does with RABBITMQ_DEFAULT_USER/PASS on its first start."""
    ctl = lambda *a: subprocess.run(["rabbitmqctl", *a], capture_output=True, text=True)  # noqa: E731
    if ctl("add_user", user, password).returncode != 0:
        r = ctl("change_password", user, password)
        if r.returncode != 0:
            raise Failure(f"rabbitmqctl cannot set the user {user}: {r.stderr}")
    r = ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    if r.returncode != 0:
        raise Failure(f"rabbitmqctl set_permissions: {r.stderr}")


def compose(binary, backend):
    profiles = ["demo"] if backend == "kafka" else ["rabbitmq"]
    services = compose_services(profiles)
    suffix = "" if backend == "kafka" else "-rabbitmq"
    volumes = {}
    with containers_in(f"tcb-compose-{backend}-") as (base, containers):
        def container(name):
            c = compose_container(base, name, services[name], binary, volumes)
            containers.append(c)
            return c, base_env(services[name].get("environment"))

        setup, env = container("setup")
        setup.run(setup.argv(services["setup"].get("entrypoint"), services["setup"]["command"]), env)
        if backend == "rabbitmq":
            # The rabbitmq service's own command, as RabbitMQ's user (999) would run it, with a
            # stand-in for the image's docker-entrypoint.sh that reports the credentials it got;
            # then the test machine's RabbitMQ gets that user.
            svc = services["rabbitmq"]
            rabbit = compose_container(base, "rabbitmq", svc, binary, volumes, uid=999)
            stub = os.path.join(base, "rabbitmq-image-bin")
            os.makedirs(stub, mode=0o755)
            with open(os.path.join(stub, "docker-entrypoint.sh"), "w") as f:
                f.write('#!/bin/sh\nprintf "%s\\n%s\\n" "$RABBITMQ_DEFAULT_USER" "$RABBITMQ_DEFAULT_PASS"\n')
            os.chmod(os.path.join(stub, "docker-entrypoint.sh"), 0o755)
            env = base_env(svc.get("environment"))
            env["PATH"] = stub + ":" + env["PATH"]
            user, password = rabbit.run(rabbit.argv(svc["entrypoint"], svc["command"]), env).split("\n")[:2]
            if not user or len(password) < 32:
                raise Failure(f"rabbitmq: the command gave user {user!r} and a password of {len(password)} characters")
            ensure_rabbitmq_user(user, password)

        for name in ["simulator", f"ingress{suffix}", f"worker{suffix}"]:
            c, env = container(name)
            c.start(c.argv(services[name].get("entrypoint"), services[name]["command"]), env)
            healthcheck(c, services[name], env)

        # The demo profile (on the Kafka stack): webhooks at https://ingress:8443 (the sender checks
        # the certificate), then its "ERP" prints what arrived.
        if backend == "kafka":
            demo, env = container("demo-webhooks")
            out = demo.run(demo.argv(None, services["demo-webhooks"]["command"]), env, timeout=120)
            if "20 of 20 webhooks accepted" not in out:
                raise Failure(f"demo-webhooks: {out}")

        # This run's own orders, by GET and by POST, must reach the orders topic.
        ca = os.path.join(volumes["tls"], "dev-ca.pem")
        with open(os.path.join(volumes["ingress-secrets"], "webhook-password")) as f:
            password = f.read().strip()
        host = "ingress" if backend == "kafka" else "ingress-rabbitmq"
        get_id, post_id = f"deploy-{RUN}-{backend}-get", f"deploy-{RUN}-{backend}-post"
        status, text = send(f"https://{host}:8443/webhook/{get_id}", ca, password)
        if status != 200:
            raise Failure(f"GET webhook: {status} {text}")
        status, text = send(f"https://{host}:8443/webhook", ca, password, "POST", event_body(post_id))
        if status != 200:
            raise Failure(f"POST webhook: {status} {text}")
        status, _ = send(f"https://{host}:8443/webhook/{get_id}", ca, "wrong-password-1234")
        if status != 401:
            raise Failure(f"a wrong webhook password: {status}, wanted 401")

        worker = next(c for c in containers if c.name == f"worker{suffix}")
        worker_env = base_env(services[f"worker{suffix}"].get("environment"))
        delivered(worker, worker.map("/etc/tradecloud-bridge/bridge.toml"), worker_env, [get_id, post_id])
        if backend == "kafka":
            erp, env = container("demo-erp")
            out = erp.run(erp.argv(None, services["demo-erp"]["command"]), env, timeout=150)
            lines = [l for l in out.splitlines() if l.startswith("{")]
            if len(lines) != 20:
                raise Failure(f"demo-erp printed {len(lines)} messages, wanted 20")



# ---- Kubernetes -------------------------------------------------------------------------------

def kubernetes(binary, overlay):
    docs = [d for d in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", os.path.join(ROOT, "deploy", "kubernetes", "overlays", overlay)],
        check=True, capture_output=True, text=True).stdout) if d]
    with containers_in(f"tcb-k8s-{overlay}-") as (base, containers):
        # The Secrets an operator creates (docs/deploy.md); the TLS one from a test certificate.
        tls_dir = os.path.join(base, "cert")
        subprocess.run([binary, "dev-certificate", "--dir", tls_dir, "--san", "tradecloud-bridge-webhook"],
                       check=True, capture_output=True)
        webhook_password = secrets.token_urlsafe(24)
        secret_data = {
            "tradecloud-bridge-webhook": {"password": webhook_password},
            "tradecloud-bridge-tradecloud": {"password": secrets.token_urlsafe(24)},
            "tradecloud-bridge-rabbitmq": {"username": "guest", "password": "guest"},
            "tradecloud-bridge-tls": {
                "tls.crt": open(os.path.join(tls_dir, "dev-cert.pem")).read(),
                "tls.key": open(os.path.join(tls_dir, "dev-key.pem")).read(),
            },
        }
        configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
        deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}

        def materialize(name, volume, fs_group):
            """A volume's files, as the kubelet would mount them: owned by root, group fsGroup,
            with the volume's defaultMode (0644 when it sets none)."""
            folder = os.path.join(base, "volumes", name)
            os.makedirs(folder, mode=0o755)
            files = {}
            if "configMap" in volume:
                files = dict(configmaps[volume["configMap"]["name"]])
                mode = volume["configMap"].get("defaultMode", 0o644)
            elif "secret" in volume:
                files = dict(secret_data[volume["secret"]["secretName"]])
                mode = volume["secret"].get("defaultMode", 0o644)
            elif "projected" in volume:
                mode = volume["projected"].get("defaultMode", 0o644)
                for source in volume["projected"]["sources"]:
                    data = secret_data[source["secret"]["name"]]
                    for item in source["secret"]["items"]:
                        files[item["path"]] = data[item["key"]]
            else:
                raise Failure(f"volume {name}: a kind this test does not lay out: {sorted(volume)}")
            for file, text in files.items():
                path = os.path.join(folder, file)
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, mode)
                if AS_BRIDGE and fs_group is not None:
                    os.chown(path, 0, fs_group)
            return folder

        order_id = f"deploy-{RUN}-k8s-{overlay}"
        started = {}
        for name in ["tradecloud-bridge-ingress", "tradecloud-bridge-worker"]:
            pod = deployments[name]["spec"]["template"]["spec"]
            c = pod["containers"][0]
            sc = pod.get("securityContext") or {}
            volumes = {v["name"]: materialize(f"{name}-{v['name']}", v, sc.get("fsGroup")) for v in pod["volumes"]}
            mounts = []
            for m in c["volumeMounts"]:
                source = volumes[m["name"]]
                if m.get("subPath"):
                    source = os.path.join(source, m["subPath"])
                mounts.append((m["mountPath"], source))
            container = Container(base, name, binary, mounts, sc.get("runAsUser", BRIDGE_UID))
            if AS_BRIDGE:
                container.user = {"user": sc["runAsUser"], "group": sc.get("runAsGroup", 0),
                                  "extra_groups": [sc["fsGroup"]] if "fsGroup" in sc else []}
            containers.append(container)
            if any("value" not in e for e in c.get("env") or []):
                raise Failure(f"{name}: an env entry without a plain value; teach this test its source")
            env = base_env({e["name"]: e["value"] for e in c.get("env") or []})
            container.start(container.argv(c.get("command"), c["args"]), env)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = c[probe]["httpGet"]
                port = ports.get(get["port"], get["port"])
                url = f"http://127.0.0.1:{port}{get['path']}"
                timeout = c[probe]["timeoutSeconds"]

                def answered(url=url, timeout=timeout):
                    if any(p.poll() is not None for p, _ in container.procs):
                        raise Failure(f"{name} exited:\n{container.log()}")
                    with urllib.request.urlopen(url, timeout=timeout) as r:
                        return r.status == 200
                try:
                    wait_for(f"{name}: {probe} {url}", answered, 60)
                except Failure as e:
                    raise Failure(f"{e}\n{container.log()}")
            started[name] = (container, env, c)

        ingress = started["tradecloud-bridge-ingress"][0]
        port = {p["name"]: p["containerPort"] for p in started["tradecloud-bridge-ingress"][2]["ports"]}["webhook"]
        status, text = send(f"https://localhost:{port}/webhook", os.path.join(tls_dir, "dev-ca.pem"),
                            webhook_password, "POST", event_body(order_id))
        if status != 200:
            raise Failure(f"{overlay}: POST webhook: {status} {text}\n{ingress.log()}")
        worker, env, _ = started["tradecloud-bridge-worker"]
        delivered(worker, worker.map("/etc/tradecloud-bridge/bridge.toml"), env, [order_id])


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "tradecloud-bridge"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"deploy: {binary} is not built (cargo build)")
    unmapped = [h for h in HOSTS if subprocess.run(["getent", "hosts", h], capture_output=True, text=True).stdout.split()[:1] != ["127.0.0.1"]]
    if unmapped:
        sys.exit(f"deploy: {unmapped} do not resolve to 127.0.0.1; run scripts/services.sh")
    cases = [
        ("docker-compose, Kafka", lambda: compose(binary, "kafka")),
        ("docker-compose, RabbitMQ", lambda: compose(binary, "rabbitmq")),
        ("Kubernetes overlay kafka", lambda: kubernetes(binary, "kafka")),
        ("Kubernetes overlay rabbitmq", lambda: kubernetes(binary, "rabbitmq")),
    ]
    only = os.environ.get("DEPLOY_ONLY")
    passed = failed = 0
    for label, case in cases:
        if only and only not in label:
            continue
        t = time.monotonic()
        try:
            case()
            passed += 1
            print(f"test deploy: {label} ... ok ({time.monotonic() - t:.1f} s)", flush=True)
        except (Failure, subprocess.SubprocessError, OSError, KeyError) as e:
            failed += 1
            print(f"test deploy: {label} ... FAILED ({time.monotonic() - t:.1f} s)\n{e}", flush=True)
    print(f"test result: {'ok' if failed == 0 else 'FAILED'}. {passed} passed; {failed} failed; (tests/deploy.py)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
