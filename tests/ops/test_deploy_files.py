"""The deploy kit (``ops/deploy``, ``ops/RUNBOOK.md``), checked offline and,
wherever a real tool exists here, with the real tool.

- YAML: every document of every YAML file parses.
- Compose: validated against the Compose Specification's JSON schema (the
  copy the check-jsonschema package ships); its paths resolve; the huddle
  command lines it runs parse with huddle's own argument parser.
- Kubernetes: every manifest against the Kubernetes JSON schemas the
  kubernetes-validate package ships, strict (an unknown field fails), for
  the oldest and the newest Kubernetes we claim; ``kubectl kustomize`` output
  too when kubectl is installed.
- systemd: a structural check always; ``systemd-analyze verify`` and
  ``systemd-analyze security --offline`` when the binary is installed.
- redis.conf: the bundled redis-server started with it and with the ACL file
  ``init-secrets.sh`` writes; every directive read back with CONFIG GET.
- The wiring end to end: a real ``huddle node`` started with the Kubernetes
  Deployment's own arguments and the secrets ``init-secrets.sh`` made, on
  that Redis: it joins as the ``huddle`` user, signs with the cluster key,
  writes the readiness probe's file, answers the liveness probe's HTTP
  path, exports the metrics the dashboard uses, and exits 0 on SIGTERM.
- Grafana and Prometheus: every PromQL expression parses (promql-parser) and
  names only metrics a node exports, or ones listed in
  ``ops/deploy/assumed-names.toml`` (names other branches are expected to
  bring; the lead deletes a line there when its name lands).

Every process started here is ended by its own PID, pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.cli import build_parser
from actors.runtime.metrics import LEASE_RENEW_LATENCY, NODE_GAUGES, NodeMetrics
from ops.prometheus import NodeMetricsCollector
from bus.address import SYS_METRICS, channel_for
from bus.embedded import find_redis_server
from bus.envelope import Codec
from bus.signing import MARKER, cluster_signer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "ops" / "deploy"
RUNBOOK = REPO / "ops" / "RUNBOOK.md"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
UNIT = DEPLOY / "systemd" / "huddle-node@.service"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"
INIT_SECRETS = DEPLOY / "init-secrets.sh"
NODE_MANIFEST = DEPLOY / "kubernetes" / "node.yaml"
REDIS_MANIFEST = DEPLOY / "kubernetes" / "redis.yaml"
SECRET_EXAMPLE = DEPLOY / "kubernetes" / "secret.example.yaml"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
DASHBOARD = DEPLOY / "grafana" / "huddle-fleet.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

#: Oldest and newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
DEADLINE = 30.0
"""Upper bound of every wait on a process; reached only when something is broken."""

#: Series Prometheus makes itself (not exported by a node).
PROMETHEUS_OWN_SERIES = frozenset({"up"})


# -- helpers: files ----------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def documents(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def the_document(path: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents(path) if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{path.name}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def assumed_names() -> dict[str, dict[str, str]]:
    with (DEPLOY / "assumed-names.toml").open("rb") as fh:
        return tomllib.load(fh)


# -- helpers: huddle command lines -------------------------------------------------


def _subcommand_parser(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("huddle has no subcommands")


def known_options(subcommand: str) -> set[str]:
    """The option strings ``huddle SUBCOMMAND`` accepts today."""
    return {opt for action in _subcommand_parser(subcommand)._actions for opt in action.option_strings}


def without_pending_options(argv: list[str]) -> list[str]:
    """``argv`` less the assumed ``huddle node`` flags this checkout does not
    know yet (they are flags: they take no value)."""
    pending = set(assumed_names()["node_options"]) - known_options("node")
    return [arg for arg in argv if arg not in pending]


def parse_huddle(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after ``huddle``) parsed by huddle's real parser, minus the
    assumed options not landed yet; a parse error fails the test with
    argparse's own message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return build_parser().parse_args(without_pending_options(argv))
        except SystemExit:
            pass
    raise AssertionError(f"huddle {shlex.join(argv)} does not parse:\n{err.getvalue()}")


# -- helpers: systemd --------------------------------------------------------------


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as section -> [(key, value)] in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def exec_start_argv(unit: dict[str, list[tuple[str, str]]], instance: str, environment: dict[str, str],
                    key: str = "ExecStart") -> list[str]:
    """ExecStart (or another Exec* ``key``) as systemd runs it: %i/%t
    expanded, ``${VAR}`` substituted in a word, ``$VAR`` alone split into
    words (empty: no word), ``$$`` a literal ``$``."""
    env: dict[str, str] = {}
    for assignment in unit_values(unit, "Service", "Environment"):
        for word in shlex.split(assignment):
            name, _, value = word.partition("=")
            env[name] = value
    env.update(environment)
    line = unit_value(unit, "Service", key).replace("%i", instance).replace("%t", "/run")
    argv: list[str] = []
    for word in shlex.split(line):
        if re.fullmatch(r"\$\w+", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word).replace("$$", "$"))
    return argv


def duration_seconds(text: str) -> float:
    """A systemd/compose duration (``120``, ``120s``, ``2m``, ``1m30s``) in seconds."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * scale[u] for n, u in parts)


# -- helpers: metrics and PromQL ----------------------------------------------------


def metric_names(exposition: str) -> set[str]:
    """Every series name in a Prometheus text exposition (counters with
    their ``_total``), whether the family has samples or not."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(sample.name for sample in family.samples)
    return names


def exported_metric_names() -> set[str]:
    """The series a node's /metrics serves, read off the exporter's code:
    one sample of figures with every labelled family and every declared
    gauge filled in, rendered as a scrape renders it."""
    figures = NodeMetrics(node="n", ts=0.0, actors_by_kind={"meeting": 1}, dead_letters_by_reason={"expired": 1},
                          gauges=dict.fromkeys(NODE_GAUGES, 0.01))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeMetricsCollector(lambda: figures))
    return metric_names(generate_latest(registry).decode())


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects; fails if it does not parse
    or selects a series without naming it."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def grafana_promql(expr: str) -> str:
    """A Grafana query with its variables replaced by values, as Grafana
    sends it to Prometheus."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(SERIES, LABEL)"
            queries.append(match.group(1))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = documents(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def markdown_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# -- YAML ------------------------------------------------------------------------------


def test_every_yaml_document_in_the_kit_parses() -> None:
    files = yaml_files()
    assert {COMPOSE, NODE_MANIFEST, REDIS_MANIFEST, KUSTOMIZATION, ALERTS, PROMETHEUS} <= set(files)
    for path in files:
        docs = documents(path)
        assert docs, f"{path} holds no document"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document is a mapping"


# -- compose ---------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def compose_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_follows_the_compose_specification() -> None:
    (doc,) = documents(COMPOSE)
    assert compose_errors(doc) == []


def test_compose_schema_check_rejects_a_misspelt_key() -> None:
    (doc,) = documents(COMPOSE)
    doc["services"]["node"]["stop_grace_periode"] = doc["services"]["node"].pop("stop_grace_period")
    assert any("stop_grace_periode" in e for e in compose_errors(doc))


def test_compose_paths_secrets_and_commands_resolve() -> None:
    (doc,) = documents(COMPOSE)
    here = COMPOSE.parent
    services = doc["services"]
    assert {"redis", "node", "dataserver"} <= set(services)
    assert services["node"]["deploy"]["replicas"] >= 2
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (here / build["context"]).resolve() == REPO
            assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (here / source).exists(), f"{name}: mounts {source}, which does not exist"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
        for secret in service.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in doc["secrets"]
    # Redis runs the tuned file, mounted where its command line reads it.
    redis_service = services["redis"]
    config_target = next(v.split(":")[1] for v in redis_service["volumes"] if v.startswith("../redis/redis.conf:"))
    assert redis_service["command"][:2] == ["redis-server", config_target]
    # Secret files live where git never sees them.
    secret_paths = [doc["secrets"][s]["file"] for s in doc["secrets"] if "file" in doc["secrets"][s]]
    secret_paths.append(services["node"]["env_file"])
    ignored = (here / ".gitignore").read_text().split()
    assert all(any(p.startswith(pattern) for pattern in ignored) for p in secret_paths)
    # The commands are real huddle command lines.
    node_args = parse_huddle(services["node"]["command"])
    assert node_args.command == "node" and node_args.cluster_key_file == "/run/secrets/cluster_key"
    assert node_args.metrics_host == "0.0.0.0" and str(node_args.metrics_port) in services["node"]["expose"]
    assert services["node"]["healthcheck"]["test"][-1] == node_args.ready_file
    data_args = parse_huddle(services["dataserver"]["command"])
    assert data_args.command == "dataserver" and data_args.host == "0.0.0.0"
    # The node's uid owns its key inside the container.
    assert services["node"]["secrets"][0]["uid"] == str(dockerfile_uid())


# -- Kubernetes --------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted((DEPLOY / "kubernetes").glob("*.yaml"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_follow_the_kubernetes_schemas(version: str) -> None:
    checked = []
    for path in manifest_files():
        for doc in documents(path):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                                     f"at {'/'.join(map(str, exc.path))}") from None
            checked.append(doc["kind"])
    assert {"Deployment", "PodDisruptionBudget", "StatefulSet", "Service", "Secret"} <= set(checked)


def test_kubernetes_schema_check_rejects_an_unknown_field() -> None:
    deployment = the_document(NODE_MANIFEST, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_builds_the_redis_config_from_the_one_tuned_file() -> None:
    (kustomization,) = documents(KUSTOMIZATION)
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).is_file()
    assert "kubernetes/secret.example.yaml" not in kustomization["resources"], "placeholders must never be applied"
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["redis.conf=redis/redis.conf"]
    statefulset = the_document(REDIS_MANIFEST, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    config = next(v for v in pod["volumes"] if "configMap" in v)
    assert config["configMap"]["name"] == generator["name"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == config["name"])
    assert container["args"][0] == f"{mount['mountPath']}/redis.conf"
    acl = next(v for v in pod["volumes"] if "secret" in v)
    acl_mount = next(m for m in container["volumeMounts"] if m["name"] == acl["name"])
    assert container["args"][1:] == ["--aclfile", f"{acl_mount['mountPath']}/users.acl"]
    secrets = {d["metadata"]["name"]: d for d in documents(SECRET_EXAMPLE)}
    assert "users.acl" in secrets[acl["secret"]["secretName"]]["stringData"]
    assert [image["name"] for image in kustomization["images"]] == [
        the_document(NODE_MANIFEST, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]]


def test_kubectl_kustomize_output_follows_the_kubernetes_schemas() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the manifests themselves are checked above)")
    built = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "huddle"
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["data"]["redis.conf"] == REDIS_CONF.read_text()
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    assert config_map["metadata"]["name"] in [v.get("configMap", {}).get("name") for v in volumes]


def node_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, the node container) of the node Deployment."""
    pod = the_document(NODE_MANIFEST, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_node_deployment_health_comes_from_the_node_itself_and_stop_means_drain() -> None:
    deployment = the_document(NODE_MANIFEST, "Deployment")
    pod, container = node_container()
    args = parse_huddle([a.replace("$(POD_NAME)", "huddle-node-0") for a in container["args"]])
    assert args.command == "node" and args.node_id == "huddle-node-0"
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "REDIS_URL"}
    # startup/readiness: the node's ready file; liveness: its metrics endpoint.
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["test", "-s", args.ready_file]
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/metrics"
    (port,) = [p for p in container["ports"] if p["name"] == liveness["port"]]
    assert port["containerPort"] == args.metrics_port and args.metrics_host == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    # The key file and the ready file live on volumes the pod mounts.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_volume = volumes[mounts[str(Path(args.cluster_key_file).parent)]]
    assert key_volume["secret"]["items"] == [{"key": Path(args.cluster_key_file).name,
                                               "path": Path(args.cluster_key_file).name}]
    assert "emptyDir" in volumes[mounts[str(Path(args.ready_file).parent)]]
    # Rollouts add a node before draining one; the budget is one node at a time.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    budget = the_document(NODE_MANIFEST, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    # Unprivileged, as the image's own user.
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The pod may reach Redis (network policy label).
    assert deployment["spec"]["template"]["metadata"]["labels"]["huddle-redis-client"] == "true"


def test_every_stop_leaves_the_node_the_same_time_to_drain() -> None:
    unit = read_unit(UNIT)
    systemd = duration_seconds(unit_value(unit, "Service", "TimeoutStopSec"))
    (compose,) = documents(COMPOSE)
    compose_grace = duration_seconds(compose["services"]["node"]["stop_grace_period"])
    pod, _ = node_container()
    assert systemd == compose_grace >= 60
    assert pod["terminationGracePeriodSeconds"] >= systemd


# -- systemd ---------------------------------------------------------------------------


def test_systemd_unit_runs_a_drained_hardened_node_per_instance() -> None:
    unit = read_unit(UNIT)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])  # last value of each key
    argv = exec_start_argv(unit, "a1", {"REDIS_URL": "redis://huddle:x@redis:6379/0"})
    assert argv[0] == "/opt/huddle/bin/huddle"
    args = parse_huddle(argv[1:])
    assert args.node_id == "a1" and args.cluster_key_file == "/etc/huddle/cluster.key"
    assert args.ready_file == "/run/huddle-node/a1/ready"
    # `systemctl start` waits for that file.
    wait = exec_start_argv(unit, "a1", {}, key="ExecStartPost")
    assert wait[:2] == ["/bin/sh", "-c"] and '"$1"' in wait[2] and wait[-1] == args.ready_file
    assert service["RuntimeDirectory"] == "huddle-node/%i"
    assert "/etc/huddle/bus.env" in unit_values(unit, "Service", "EnvironmentFile")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                       "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}.items():
        assert service.get(key) == value, f"{key}={service.get(key)!r}"
    assert service["User"] == "huddle"
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"


def verifiable_unit(tmp_path: Path, text: str) -> Path:
    """The unit with its ExecStart binary pointed at this checkout's
    ``huddle`` (verify checks that the program exists)."""
    huddle = Path(sys.executable).with_name("huddle")
    assert huddle.exists(), f"no huddle script next to {sys.executable}"
    path = tmp_path / UNIT.name
    path.write_text(text.replace("/opt/huddle/bin/huddle", str(huddle)))
    return path


def systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (the structural check above still runs)")
    return binary


def test_systemd_analyze_verifies_the_unit_and_rates_it_hardened(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    path = verifiable_unit(tmp_path, UNIT.read_text())
    verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60,
                            check=False, cwd=tmp_path)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(path)],
                              capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


def test_systemd_analyze_check_reports_a_broken_unit(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    path = verifiable_unit(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=gently"))
    verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60,
                            check=False, cwd=tmp_path)
    assert "KillMode" in verify.stderr or "kill mode" in verify.stderr


# -- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_uid() -> int:
    (user,) = [value for op, value in dockerfile_instructions() if op == "USER"]
    return int(user.split(":")[0])


def test_dockerfile_installs_the_project_on_python_3_11_slim_as_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    bases = [value.split()[0] for op, value in instructions if op == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert any(op == "RUN" and "pip install ." in value for op, value in instructions)
    copied = [value.split()[:-1] for op, value in instructions if op == "COPY" and "--from" not in value]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for sources in copied:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert f"!{source.rstrip('/')}" in ignore or f"!{source.rstrip('/')}/" in ignore, \
                f"COPY {source}: excluded from the build context by Dockerfile.dockerignore"
    assert dockerfile_uid() != 0
    (entrypoint,) = [json.loads(value) for op, value in instructions if op == "ENTRYPOINT"]
    (command,) = [json.loads(value) for op, value in instructions if op == "CMD"]
    assert entrypoint == ["huddle"]
    assert parse_huddle(command).command == "node"


# -- redis.conf and the secrets, on a real redis-server ------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def init_secrets(outdir: Path, redis_address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(INIT_SECRETS), str(outdir), redis_address], capture_output=True, text=True,
                          timeout=30, check=False)


@dataclass
class TunedRedis:
    """A redis-server running ``redis.conf`` with the ACL file
    ``init-secrets.sh`` wrote; ``ops`` is a client as its ``ops`` user (the
    one allowed to read the configuration back)."""

    proc: subprocess.Popen[bytes]
    port: int
    secrets: Path
    log: Path
    ops: redis.Redis

    @property
    def url(self) -> str:
        """REDIS_URL as ``init-secrets.sh`` wrote it (the ``huddle`` user)."""
        return read_env_file(self.secrets / "bus.env")["REDIS_URL"]


@pytest.fixture(scope="module")
def tuned_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunedRedis]:
    workdir = tmp_path_factory.mktemp("tuned-redis")
    port = free_port()
    made = init_secrets(workdir / "secrets", f"127.0.0.1:{port}")
    assert made.returncode == 0, made.stderr
    log = workdir / "redis.log"
    # The file first (redis-server reads it before its options); then only
    # what a test host must differ in: port, interface, data directory.
    cmd = [find_redis_server(), str(REDIS_CONF), "--port", str(port), "--bind", "127.0.0.1",
           "--dir", str(workdir), "--aclfile", str(workdir / "secrets" / "users.acl")]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                start_new_session=True)
    ops = redis.Redis(host="127.0.0.1", port=port, username="ops", decode_responses=True, socket_timeout=5,
                      password=(workdir / "secrets" / "ops.password").read_text().strip())
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                code = proc.wait(timeout=0.02)  # doubles as the poll interval
            except subprocess.TimeoutExpired:
                code = None
            assert code is None, f"redis-server exited with {code}:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(redis.ConnectionError):
                if int(ops.info("server")["process_id"]) == proc.pid:
                    break
            assert time.monotonic() < deadline, f"redis-server not up:\n{log.read_text()[-3000:]}"
        yield TunedRedis(proc, port, workdir / "secrets", log, ops)
    finally:
        ops.close()
        stop_by_pid(proc)


def stop_by_pid(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM by PID, SIGKILL past the deadline; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=DEADLINE)
    return proc.returncode


_UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def redis_value(word: str) -> str:
    """One argument of a redis.conf directive as CONFIG GET prints it."""
    if len(word) >= 2 and word[0] == word[-1] == '"':
        return word[1:-1]
    match = re.fullmatch(r"(\d+)([a-z]+)", word.lower())
    if match and match.group(2) in _UNITS:
        return str(int(match.group(1)) * _UNITS[match.group(2)])
    return word


def redis_conf_directives() -> dict[str, str]:
    """Directive -> the value CONFIG GET should print for it."""
    directives: dict[str, str] = {}
    buffer_limits: dict[str, str] = {}
    saves: list[str] = []
    for raw in REDIS_CONF.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, *args = shlex.split(line, posix=False)
        values = [redis_value(a) for a in args]
        if name == "client-output-buffer-limit":
            klass = {"replica": "slave"}.get(values[0], values[0])
            buffer_limits[klass] = " ".join(values[1:])
        elif name == "save":
            saves += values
        else:
            assert name not in directives, f"redis.conf sets {name} twice"
            directives[name] = " ".join(values)
    if buffer_limits:
        directives["client-output-buffer-limit"] = " ".join(f"{k} {v}" for k, v in buffer_limits.items())
    if saves:
        directives["save"] = " ".join(saves)
    return directives


def test_redis_conf_is_in_force_on_a_real_redis_server(tuned_redis: TunedRedis) -> None:
    expected = redis_conf_directives()
    overridden_by_the_test = {"bind", "port"}
    for name, value in expected.items():
        if name in overridden_by_the_test:
            continue
        actual = tuned_redis.ops.config_get(name)[name]
        if name == "client-output-buffer-limit":
            shown = actual.split()
            by_class = {shown[i]: " ".join(shown[i + 1:i + 4]) for i in range(0, len(shown), 4)}
            wanted = value.split()
            for i in range(0, len(wanted), 4):
                assert by_class[wanted[i]] == " ".join(wanted[i + 1:i + 4]), f"{name} {wanted[i]}"
        else:
            assert actual == value, f"{name}: redis.conf says {value!r}, the server runs {actual!r}"
    # What the file is for, in plain words.
    config = tuned_redis.ops.config_get("*")
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    pubsub = config["client-output-buffer-limit"].split("pubsub ")[1].split()[:3]
    hard, soft, _ = map(int, pubsub)
    assert hard > 32 * 1024**2 and soft > 8 * 1024**2, "pub/sub buffers above Redis's defaults"
    assert int(config["maxmemory"]) >= 4 * hard, "room for several lagging subscribers within maxmemory"
    assert config["protected-mode"] == "yes" and int(config["tcp-keepalive"]) > 0


def test_redis_conf_reader_gives_values_as_config_get_prints_them() -> None:
    directives = redis_conf_directives()
    assert directives["save"] == "3600 1 300 100 60 10000"
    assert directives["maxmemory"] == str(2 * 1024**3)


def test_the_huddle_user_can_do_what_nodes_do_and_nothing_administrative(tuned_redis: TunedRedis) -> None:
    client = redis.Redis.from_url(tuned_redis.url, socket_timeout=5)
    try:
        assert client.ping() and client.client_setname("huddle:test")
        pubsub = client.pubsub()
        pubsub.subscribe("huddle:acl-test")
        assert pubsub.get_message(timeout=DEADLINE)["type"] == "subscribe"
        assert client.publish("huddle:acl-test", b"x") == 1
        assert client.eval("return redis.call('INCR', KEYS[1])", 1, "huddle:acl-test:epoch") == 1
        assert client.xadd("huddle:acl-test:backlog", {"m": b"x"})
        for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("SHUTDOWN", "NOSAVE"), ("ACL", "LIST"),
                        ("DEBUG", "SLEEP", "0"), ("MONITOR",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        pubsub.close()
    finally:
        client.close()
    probe = redis.Redis(host="127.0.0.1", port=tuned_redis.port, username="probe", password="probe")
    try:
        assert probe.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            probe.get("huddle:acl-test:epoch")
    finally:
        probe.close()
    # Without a user: the `default` user is off, and has no `nopass`, so
    # protected mode (which refuses remote clients while `default` needs no
    # password) never blocks the fleet's nodes on other hosts.
    default = tuned_redis.ops.acl_getuser("default")
    assert "off" in default["flags"] and "nopass" not in default["flags"]
    with socket.create_connection(("127.0.0.1", tuned_redis.port), timeout=5) as anonymous:
        anonymous.sendall(b"PING\r\n")
        assert anonymous.recv(256).startswith(b"-NOAUTH")


def test_init_secrets_never_overwrites_and_keeps_secrets_private(tmp_path: Path) -> None:
    made = init_secrets(tmp_path / "s", "redis.internal:6380")
    assert made.returncode == 0, made.stderr
    files = {name: (tmp_path / "s" / name).read_bytes()
             for name in ("users.acl", "bus.env", "cluster.key", "ops.password")}
    url = read_env_file(tmp_path / "s" / "bus.env")["REDIS_URL"]
    assert re.fullmatch(r"redis://huddle:[0-9a-f]{64}@redis\.internal:6380/0", url)
    password = url.split(":")[2].split("@")[0]
    for secret in (password.encode(), files["ops.password"].strip()):
        assert secret not in files["users.acl"], "the ACL file holds hashes, never a password"
    assert cluster_signer(tmp_path / "s" / "cluster.key") is not None
    for name in ("bus.env", "cluster.key", "ops.password"):
        assert stat.S_IMODE((tmp_path / "s" / name).stat().st_mode) == 0o600
    again = init_secrets(tmp_path / "s", "other:1")
    assert again.returncode != 0 and "not overwriting" in again.stderr
    assert {name: (tmp_path / "s" / name).read_bytes() for name in files} == files


# -- the wiring end to end: a node started as the Deployment starts it -------------------


def test_a_node_started_with_the_deployment_arguments_joins_signs_and_answers_its_probes(
        tuned_redis: TunedRedis, tmp_path: Path) -> None:
    pod, container = node_container()
    # The pod's filesystem: each mount path becomes a directory here; the
    # secret volume holds the key init-secrets.sh made.
    mounts = {m["mountPath"]: tmp_path / m["name"] for m in container["volumeMounts"]}
    for directory in mounts.values():
        directory.mkdir()
    key_mount = next(m for m in container["volumeMounts"]
                     if "secret" in next(v for v in pod["volumes"] if v["name"] == m["name"]))
    shutil.copy(tuned_redis.secrets / "cluster.key", mounts[key_mount["mountPath"]] / "cluster.key")
    node_id = f"huddle-node-{uuid.uuid4().hex[:8]}"

    def localize(arg: str) -> str:
        for mount_path, directory in mounts.items():
            if arg.startswith(mount_path + "/"):
                return str(directory) + arg[len(mount_path):]
        return arg.replace("$(POD_NAME)", node_id)

    argv = without_pending_options([localize(a) for a in container["args"]])
    # A test binds loopback and any free port, not 0.0.0.0:9464.
    argv[argv.index("--metrics-port") + 1] = "0"
    argv[argv.index("--metrics-host") + 1] = "127.0.0.1"
    args = parse_huddle(argv)
    env = {**os.environ, "POD_NAME": node_id, "REDIS_URL": tuned_redis.url}
    env.pop("HUDDLE_CLUSTER_KEY", None)

    listener = redis.Redis.from_url(tuned_redis.url, socket_timeout=5)
    metrics_channel = listener.pubsub()
    metrics_channel.subscribe(channel_for(SYS_METRICS, ""))
    assert metrics_channel.get_message(timeout=DEADLINE)["type"] == "subscribe"
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        # Ready: the file the startup/readiness probes test.
        ready = Path(args.ready_file)
        deadline = time.monotonic() + DEADLINE
        while not (ready.exists() and ready.read_text() == node_id):
            try:
                code = proc.wait(timeout=0.02)  # doubles as the poll interval
            except subprocess.TimeoutExpired:
                code = None
            assert code is None, f"node exited with {code}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"node not ready:\n{log.read_text()[-3000:]}"
        # Live: the liveness probe's path on the metrics endpoint.
        match = re.search(r"prometheus metrics at (http://\S+)", log.read_text())
        assert match, log.read_text()
        liveness_path = container["livenessProbe"]["httpGet"]["path"]
        url = match.group(1).rsplit("/", 1)[0] + liveness_path
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            scraped = metric_names(response.read().decode())
        exported = exported_metric_names()
        # The series the code says it exports are the ones a scrape serves
        # (gauges appear once a part of the node reports them).
        gauges = {f"huddle_{LEASE_RENEW_LATENCY}"}
        assert exported - gauges <= scraped <= exported | {n for n in scraped if n.startswith("python_")}
        # Joined as the huddle user from REDIS_URL.
        clients = [c for c in tuned_redis.ops.client_list() if c.get("name", "").startswith(f"huddle:{node_id}")]
        assert clients and {c["user"] for c in clients} == {"huddle"}
        # Signed with the key from the mounted key file.
        deadline = time.monotonic() + DEADLINE
        while True:
            message = metrics_channel.get_message(timeout=1.0)
            assert time.monotonic() < deadline, "no sys:metrics from the node"
            if message and message["type"] == "message":
                data = message["data"]
                assert data[0] == MARKER, "sys:metrics published unsigned"
                figures = Codec(signer=cluster_signer(tmp_path / "cluster-key" / "cluster.key")).decode(data).message
                if figures.node == node_id:
                    break
        # Stopped by SIGTERM (what systemd, compose and the kubelet send): exit 0.
        assert stop_by_pid(proc) == 0, log.read_text()[-3000:]
        assert f"node {node_id} stopped" in log.read_text()
    finally:
        stop_by_pid(proc)
        metrics_channel.close()
        listener.close()


# -- Grafana and Prometheus ------------------------------------------------------------------


def known_metric_names() -> set[str]:
    return exported_metric_names() | set(assumed_names()["metrics"]) | PROMETHEUS_OWN_SERIES


def test_dashboard_queries_parse_and_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
            assert panel["datasource"]["uid"] == "${datasource}"
    used: set[str] = set()
    for query in dashboard_queries(dashboard):
        used |= promql_metrics(grafana_promql(query))
    assert used <= known_metric_names(), f"not exported by a node: {sorted(used - known_metric_names())}"
    # What the dashboard is for: each of these has a panel.
    assert {"huddle_actors", "huddle_mailbox_depth_max", "huddle_mailbox_depth_p99",
            "huddle_messages_received_total", "huddle_messages_sent_total", "huddle_restarts_total",
            "huddle_dead_letters_total", f"huddle_{LEASE_RENEW_LATENCY}", "huddle_bus_reconnects"} <= used
    by_reason = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "by (reason)" in t["expr"]]
    by_kind = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "by (kind)" in t["expr"]]
    assert by_reason and by_kind


def test_metric_name_check_rejects_a_name_no_node_exports() -> None:
    assert promql_metrics("sum(rate(huddle_mesages_received_total[5m]))") - known_metric_names()
    with pytest.raises(ValueError):
        promql_metrics("sum(rate(huddle_actors[5m])")


def test_alert_rules_parse_name_exported_metrics_and_point_at_the_runbook() -> None:
    rules = alert_rules()
    anchors = markdown_anchors(RUNBOOK)
    (prometheus,) = documents(PROMETHEUS)
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    for rule in rules:
        assert rule["alert"].startswith("Huddle") and rule["labels"]["severity"] in {"page", "warn"}
        used = promql_metrics(rule["expr"])
        assert used <= known_metric_names(), f"{rule['alert']}: {sorted(used - known_metric_names())}"
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']}: no scrape job {job}"
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("RUNBOOK.md#") and runbook.split("#", 1)[1] in anchors, runbook
        assert rule["annotations"]["summary"]
    names = {rule["alert"] for rule in rules}
    assert {"HuddleDeadLetters", "HuddleStaleEpoch", "HuddleLeaseRenewSlow", "HuddleBusReconnects"} <= names
    # Prometheus (compose) loads these rules from where compose mounts them.
    (compose,) = documents(COMPOSE)
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["services"]["prometheus"]["volumes"] if v.startswith("."))
    assert mounts["../prometheus/alerts.yml"] in prometheus["rule_files"]


def test_every_assumed_name_is_still_used_somewhere() -> None:
    assumed = assumed_names()
    (compose,) = documents(COMPOSE)
    _, container = node_container()
    commands = [compose["services"]["node"]["command"], container["args"],
                exec_start_argv(read_unit(UNIT), "a1", {})]
    for option in assumed["node_options"]:
        assert all(option in command for command in commands), f"{option}: no longer used everywhere"
    queries = dashboard_queries(json.loads(DASHBOARD.read_text())) + [r["expr"] for r in alert_rules()]
    used = set().union(*(promql_metrics(grafana_promql(q)) for q in queries))
    for metric in assumed["metrics"]:
        assert metric in used, f"{metric}: listed as assumed but used nowhere"
