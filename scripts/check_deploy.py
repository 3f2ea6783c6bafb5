#!/usr/bin/env python3
"""Static checks of what cannot run here (no container engine, no cluster).

* docker-compose.yml: `docker-compose config` of every profile; no secret as a plain value.
* Kubernetes: `kubectl kustomize` of every overlay, and of the kafka overlay with each component;
  every object validated with kubernetes-validate --strict (the Prometheus Operator's objects,
  which it has no schema for, by their own checks); a policy over the rendered manifests (non-root,
  read-only root filesystem, probes with timeouts, resources, no :latest, no secret as a plain
  value, no API token, a disruption budget per Deployment, a default-deny NetworkPolicy); the
  PrometheusRule's groups through `promtool check rules`.
* Observability: the Grafana dashboard is JSON whose every query is valid PromQL (`promtool check
  rules` over them) naming only metrics the bridge exports (crates/telemetry/src/metrics.rs), and
  so do the alert rules; `promtool check config` of compose's Prometheus; the collector's
  pipelines name only receivers, processors and exporters it defines.
* The image: deploy/Dockerfile's build context (after deploy/Dockerfile.dockerignore) holds no key,
  certificate or development data; no secret in ARG/ENV; a non-root USER; a HEALTHCHECK.

Exits 1 with every problem listed. Run by scripts/check-deploy.sh (part of the test command).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
KUBERNETES_VERSION = "1.33"
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL)", re.I)
CRD_GROUPS = ("monitoring.coreos.com/",)

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


# ---- docker-compose -------------------------------------------------------------------------

def check_compose():
    for profiles in ([], ["rabbitmq"], ["demo"], ["rabbitmq", "demo"], ["observability"]):
        args = [a for p in profiles for a in ("--profile", p)]
        label = "docker-compose " + (" ".join(args) or "(default profile)")
        try:
            text = run(["docker-compose", "-f", "docker-compose.yml", *args, "config"])
        except subprocess.CalledProcessError as e:
            problem(label, e.stderr.strip())
            continue
        doc = yaml.safe_load(text)
        for name, svc in doc.get("services", {}).items():
            env = svc.get("environment") or {}
            for key, value in env.items():
                if SECRET_NAME.search(key) and value not in (None, ""):
                    problem(f"{label} service {name}", f"{key} is a plain value; mount a secret file")
            for port in svc.get("ports") or []:
                published = str(port.get("published", "")) if isinstance(port, dict) else str(port)
                if published and name not in ("ingress", "ingress-rabbitmq"):
                    host_ip = port.get("host_ip", "") if isinstance(port, dict) else ""
                    if host_ip not in ("127.0.0.1", "::1") and "127.0.0.1:" not in str(port):
                        problem(f"{label} service {name}", f"port {port} is published beyond localhost")
            long_running = svc.get("restart") != "no"
            health = svc.get("healthcheck") or {}
            if long_running and (not health or health.get("test") in (None, ["NONE"]) or health.get("disable")):
                problem(f"{label} service {name}", "no healthcheck")
            for dep, cond in (svc.get("depends_on") or {}).items():
                if not isinstance(cond, dict) or cond.get("condition") not in (
                        "service_healthy", "service_completed_successfully"):
                    problem(f"{label} service {name}", f"depends on {dep} without a health condition")
            if name.startswith(("ingress", "worker")) and _seconds(svc.get("stop_grace_period", "10s")) <= 20:
                problem(f"{label} service {name}", "stop_grace_period is not above the ingress's 20 s drain")
        for vol in ("kafka-data", "rabbitmq-data"):
            if vol not in (doc.get("volumes") or {}):
                problem(label, f"the broker volume {vol} is missing")
        print(f"ok  {label}")


def _seconds(text):
    """A compose duration (45s, 1m30s) in seconds."""
    total = 0
    for number, unit in re.findall(r"(\d+)(h|ms|m|s)", str(text)):
        total += int(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


# The simulator's fixed stand-in for Tradecloud's legacy API: not a secret of anyone's.
PLAIN_ALLOWED = {("worker.tradecloud.legacy_password", "legacy-password")}
SECRET_KEY = re.compile(r"(password|secret|token)$")


def check_bridge_configs():
    """Every bridge config under deploy/compose and the overlays takes its secrets from a file or
    a variable, never as a plain value."""
    for folder in ("deploy/compose", "deploy/kubernetes/overlays"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".toml"):
                    continue
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    config = tomllib.load(f)

                def walk(node, key=""):
                    if isinstance(node, dict):
                        for k, v in node.items():
                            walk(v, f"{key}.{k}" if key else k)
                    elif isinstance(node, str):
                        plain = "${" not in node
                        leaf = key.rsplit(".", 1)[-1]
                        secret = SECRET_KEY.search(leaf) or (leaf == "uri" and re.search(r"://[^/@]*:[^/@]*@", node))
                        if secret and plain and (key, node) not in PLAIN_ALLOWED:
                            problem(os.path.relpath(path, ROOT), f"{key} is a plain secret; use ${{file:...}}")
                walk(config)
    print("ok  bridge configs: secrets from files")


# ---- Kubernetes -------------------------------------------------------------------------------

def render(path):
    return [d for d in yaml.safe_load_all(run(["kubectl", "kustomize", path])) if d]


def renders():
    """(label, documents) for every overlay and for the kafka overlay with each component."""
    out = []
    for overlay in sorted(os.listdir(os.path.join(K8S, "overlays"))):
        out.append((f"overlay {overlay}", render(os.path.join(K8S, "overlays", overlay))))
    for component in sorted(os.listdir(os.path.join(K8S, "components"))):
        with tempfile.TemporaryDirectory(dir=K8S, prefix=".check-") as tmp:
            rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                yaml.safe_dump({
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [rel(os.path.join(K8S, "overlays", "kafka"))],
                    "components": [rel(os.path.join(K8S, "components", component))],
                }, f)
            out.append((f"overlay kafka + component {component}", render(tmp)))
    return out


def validate_schemas(label, docs):
    plain = [d for d in docs if not d.get("apiVersion", "").startswith(CRD_GROUPS)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump_all(plain, f)
        f.flush()
        r = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
             "--kubernetes-version", KUBERNETES_VERSION, f.name],
            capture_output=True, text=True)
        if r.returncode != 0:
            problem(label, "kubernetes-validate: " + (r.stdout + r.stderr).strip())


def check_prometheus_rule(label, doc):
    groups = (doc.get("spec") or {}).get("groups")
    if not groups:
        problem(label, "PrometheusRule without groups")
        return
    for group in groups:
        for rule in group.get("rules") or []:
            check_metric_names(f"{label} alert {rule.get('alert')}", rule.get("expr", ""))
    promtool_rules(label, groups)


def promtool_rules(label, groups):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": groups}, f)
        f.flush()
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            problem(label, "promtool check rules: " + (r.stdout + r.stderr).strip())


def check_pod(where, pod, deployment_name):
    sc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        problem(where, "automountServiceAccountToken is not false")
    if not pod.get("serviceAccountName") or pod.get("serviceAccountName") == "default":
        problem(where, "no dedicated ServiceAccount")
    for c in pod.get("containers", []):
        cw = f"{where} container {c.get('name')}"
        csc = c.get("securityContext") or {}
        non_root = csc.get("runAsNonRoot", sc.get("runAsNonRoot"))
        user = csc.get("runAsUser", sc.get("runAsUser"))
        if non_root is not True or user in (None, 0):
            problem(cw, "does not run as a non-root user")
        if csc.get("readOnlyRootFilesystem") is not True:
            problem(cw, "root filesystem is not read-only")
        if csc.get("allowPrivilegeEscalation") is not False:
            problem(cw, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problem(cw, "capabilities are not all dropped")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            problem(cw, f"image {image!r} is not pinned (a tag other than latest, or a digest)")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe)
            if not p:
                if probe != "startupProbe":
                    problem(cw, f"no {probe}")
            elif "timeoutSeconds" not in p:
                problem(cw, f"{probe} has no explicit timeoutSeconds")
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        if "cpu" not in requests or "memory" not in requests or "memory" not in limits:
            problem(cw, "resources need cpu and memory requests and a memory limit")
        for e in c.get("env") or []:
            if "value" in e and SECRET_NAME.search(e.get("name", "")):
                problem(cw, f"env {e['name']} is a plain value; mount a secret file")
        pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if pre_stop and grace <= pre_stop + 20:
            problem(where, f"terminationGracePeriodSeconds {grace} leaves no time to drain after the preStop delay")
        if "ingress" in deployment_name and not pre_stop:
            problem(cw, "the webhook ingress has no preStop delay (endpoint propagation)")


def check_policy(label, docs):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    for d in kinds.get("Secret", []):
        problem(label, f"Secret {d['metadata']['name']} is rendered with its value; create it apart")
    deployments = kinds.get("Deployment", [])
    if not deployments:
        problem(label, "no Deployment")
    pdb_selectors = [p["spec"]["selector"].get("matchLabels") for p in kinds.get("PodDisruptionBudget", [])]
    for d in deployments:
        name = d["metadata"]["name"]
        where = f"{label} Deployment {name}"
        check_pod(where, d["spec"]["template"]["spec"], name)
        if d["spec"]["selector"].get("matchLabels") not in pdb_selectors:
            problem(where, "no PodDisruptionBudget")
        if not d["spec"]["template"]["spec"].get("topologySpreadConstraints"):
            problem(where, "no topologySpreadConstraints")
    policies = kinds.get("NetworkPolicy", [])
    if not any(p["spec"].get("podSelector") == {} and not p["spec"].get("ingress")
               and not p["spec"].get("egress") and len(p["spec"].get("policyTypes", [])) == 2
               for p in policies):
        problem(label, "no default-deny NetworkPolicy")
    for rule in kinds.get("PrometheusRule", []):
        check_prometheus_rule(f"{label} PrometheusRule {rule['metadata']['name']}", rule)
    for sa in kinds.get("ServiceAccount", []):
        if sa.get("automountServiceAccountToken") is not False:
            problem(label, f"ServiceAccount {sa['metadata']['name']} mounts its token")


def check_kubernetes():
    for label, docs in renders():
        validate_schemas(label, docs)
        check_policy(label, docs)
        print(f"ok  kubernetes {label}: {len(docs)} objects")


# ---- observability ----------------------------------------------------------------------------

OBSERVABILITY = os.path.join(ROOT, "deploy", "observability")
DASHBOARD = os.path.join(OBSERVABILITY, "grafana", "dashboards", "tradecloud-bridge.json")


def exported_metrics():
    """Every metric name the bridge exports: the constants of metrics.rs and metrics-process's."""
    with open(os.path.join(ROOT, "crates", "telemetry", "src", "metrics.rs")) as f:
        names = set(re.findall(r'"(tcb_[a-z0-9_]+)"', f.read()))
    return names | {"process_cpu_seconds_total", "process_resident_memory_bytes",
                    "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                    "process_start_time_seconds", "process_threads"}


def check_metric_names(label, expr):
    known = exported_metrics()
    for name in re.findall(r"\b((?:tcb|process)_[a-z0-9_]+)", expr):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        if name not in known and base not in known:
            problem(label, f"{name} is no metric the bridge exports")


def check_observability():
    label = "grafana dashboard"
    try:
        with open(DASHBOARD) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        problem(label, f"not JSON: {e}")
        return
    ids, rules = set(), []
    for panel in dash.get("panels", []):
        if panel["id"] in ids:
            problem(label, f"panel id {panel['id']} twice")
        ids.add(panel["id"])
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            check_metric_names(f"{label} panel {panel.get('title')!r}", expr)
            concrete = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": concrete})
    if not rules:
        problem(label, "no queries")
    promtool_rules(label, [{"name": "dashboard", "rules": rules}])
    print(f"ok  {label}: {len(ids)} panels, {len(rules)} queries")

    prometheus = os.path.join(OBSERVABILITY, "prometheus.yml")
    r = subprocess.run(["promtool", "check", "config", prometheus], capture_output=True, text=True)
    if r.returncode != 0:
        problem("compose prometheus.yml", (r.stdout + r.stderr).strip())
    else:
        print("ok  compose prometheus.yml")

    with open(os.path.join(OBSERVABILITY, "otel-collector.yaml")) as f:
        collector = yaml.safe_load(f)
    for name, pipeline in (collector.get("service", {}).get("pipelines") or {}).items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in (collector.get(kind) or {}):
                    problem("otel-collector.yaml", f"pipeline {name} uses undefined {kind[:-1]} {component}")
    print("ok  otel-collector.yaml")


# ---- the image --------------------------------------------------------------------------------

def ignored(path, patterns):
    """Whether .dockerignore patterns (last match wins, `!` re-includes, a match on a folder
    covers what is in it) leave `path` out of the build context."""
    out = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            out = not negate
    return out


def check_image():
    dockerfile = os.path.join(ROOT, "deploy", "Dockerfile")
    ignore = dockerfile + ".dockerignore"
    with open(ignore) as f:
        patterns = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    # What a developer's tree may hold besides the sources: each must stay out of the context.
    planted = ["tcb-data/dev-key.pem", "tcb-data/dev-credentials.json", "deploy/tls/tls.key",
               "crates/cli/leftover.pem", "target/release/tradecloud-bridge", ".git/config"]
    sent = []
    for base, dirs, files in os.walk(ROOT):
        for name in files:
            rel = os.path.relpath(os.path.join(base, name), ROOT)
            if not ignored(rel, patterns):
                sent.append(rel)
    for rel in sent + [p for p in planted if not ignored(p, patterns)]:
        lowered = rel.lower()
        if (lowered.endswith((".pem", ".key", ".crt", ".p12", ".db"))
                or "tcb-data" in lowered or "credentials" in lowered or lowered.startswith((".git/", "target/"))):
            problem("deploy/Dockerfile.dockerignore", f"{rel} would be in the build context")
    if not any(p.startswith("crates/") for p in sent) or "Cargo.lock" not in sent:
        problem("deploy/Dockerfile.dockerignore", "the sources are not in the build context")
    with open(dockerfile) as f:
        text = f.read()
    stages = set()
    for line in text.splitlines():
        stripped = line.strip()
        stage = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", stripped, re.I)
        if stage:
            image, alias = stage.groups()
            if alias:
                stages.add(alias)
            if image in stages:
                continue
        if re.match(r"(ARG|ENV)\s", stripped) and SECRET_NAME.search(stripped):
            problem("deploy/Dockerfile", f"a secret in the image: {stripped}")
        if re.match(r"FROM\s", stripped) and (stripped.split()[1].endswith(":latest") or ":" not in stripped.split()[1]) \
                and "${" not in stripped:
            problem("deploy/Dockerfile", f"unpinned base image: {stripped}")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problem("deploy/Dockerfile", "the image does not end as a non-root USER")
    if "HEALTHCHECK" not in text:
        problem("deploy/Dockerfile", "no HEALTHCHECK")
    print(f"ok  image build context: {len(sent)} files, no key, certificate or development data")


def self_test():
    """The checks find what they are for: a manifest broken on purpose, a context that would
    carry a key."""
    global problems
    docs = render(os.path.join(K8S, "overlays", "kafka"))
    for d in docs:
        if d["kind"] == "Deployment":
            c = d["spec"]["template"]["spec"]["containers"][0]
            c["securityContext"]["readOnlyRootFilesystem"] = False
            c["image"] = "tradecloud-bridge:latest"
            c["env"].append({"name": "TRADECLOUD_PASSWORD", "value": "hunter2"})
            del c["readinessProbe"]["timeoutSeconds"]
            d["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    docs.append({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "x"}, "data": {"a": "b"}})
    docs = [d for d in docs if d["kind"] != "PodDisruptionBudget"]
    check_policy("self-test", docs)
    check_metric_names("self-test", "rate(tcb_worker_triggers_totl[5m])")
    promtool_rules("self-test", [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}])
    found = "\n".join(problems)
    for needle in ("root filesystem is not read-only", "is not pinned", "TRADECLOUD_PASSWORD is a plain value",
                   "readinessProbe has no explicit timeoutSeconds", "automountServiceAccountToken",
                   "Secret x is rendered", "no PodDisruptionBudget",
                   "tcb_worker_triggers_totl is no metric", "promtool check rules"):
        if needle not in found:
            print(f"self-test: the policy missed {needle!r}", file=sys.stderr)
            sys.exit(1)
    patterns = ["*", "!crates/", "**/*.pem"]
    assert ignored("tcb-data/dev-key.pem", patterns) and ignored("crates/x/key.pem", patterns)
    assert not ignored("crates/cli/src/main.rs", patterns)
    problems = []
    print("ok  self-test: the policy finds broken manifests")


def main():
    self_test()
    check_compose()
    check_bridge_configs()
    check_kubernetes()
    check_observability()
    check_image()
    if problems:
        print("\n".join(["check-deploy found problems:"] + [f"  - {p}" for p in problems]), file=sys.stderr)
        sys.exit(1)
    print("check-deploy: all checks passed")


if __name__ == "__main__":
    main()
