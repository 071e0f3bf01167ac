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
- The fleet on a Redis Cluster (``compose/compose.redis-cluster.yaml``,
  the ``kubernetes/redis-cluster`` Component): six cluster nodes from the
  tuned redis.conf, one service/Job forming them with ``--cluster-replicas
  1``, every huddle service and the node Deployment on a ``redis+cluster://``
  URL whose seeds are exactly the cluster's services/pods, images pinned,
  passwords never inline, the restricted pod profile and resources,
  references that resolve, ``kubectl kustomize`` with the Component on; the
  compose fleet equal to compose.yaml but for the bus. Run for real (Redis
  >= 7 here): six redis-servers started with the compose file's own
  arguments through its node script, formed by its create script (three
  primaries, a replica each, replication authenticated, every readiness
  probe passing; a second run changes nothing), a real ``huddle node`` joining
  with the compose URL as the ``huddle`` user, and the cluster whole again
  after every node came back on a new address.
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
from collections.abc import Callable, Iterator
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
from bus.embedded_cluster import INSTALL_HINT, find_redis7
from bus.envelope import Codec
from bus.ports import free_port
from bus.sharded import ClusterUrl
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
# The fleet on a Redis Cluster.
CLUSTER_COMPOSE = DEPLOY / "compose" / "compose.redis-cluster.yaml"
CLUSTER_DIR = DEPLOY / "kubernetes" / "redis-cluster"
CLUSTER_COMPONENT = CLUSTER_DIR / "kustomization.yaml"
CLUSTER_MANIFEST = CLUSTER_DIR / "redis-cluster.yaml"
CLUSTER_JOB = CLUSTER_DIR / "create-cluster-job.yaml"
CLUSTER_NODE_PATCH = CLUSTER_DIR / "node-redis-url.yaml"
CLUSTER_SECRET_EXAMPLE = CLUSTER_DIR / "secret.example.yaml"
CLUSTER_NODE_SCRIPT = CLUSTER_DIR / "redis-cluster-node.sh"
CLUSTER_READY_SCRIPT = CLUSTER_DIR / "redis-cluster-ready.sh"
CREATE_CLUSTER_SCRIPT = CLUSTER_DIR / "create-cluster.sh"

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
    assert {CLUSTER_COMPOSE, CLUSTER_COMPONENT, CLUSTER_MANIFEST, CLUSTER_JOB, CLUSTER_NODE_PATCH,
            CLUSTER_SECRET_EXAMPLE} <= set(files)
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


@pytest.mark.parametrize("path", [COMPOSE, CLUSTER_COMPOSE], ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    (doc,) = documents(path)
    assert compose_errors(doc) == []


def test_compose_schema_check_rejects_a_misspelt_key() -> None:
    (doc,) = documents(COMPOSE)
    doc["services"]["node"]["stop_grace_periode"] = doc["services"]["node"].pop("stop_grace_period")
    assert any("stop_grace_periode" in e for e in compose_errors(doc))


def assert_compose_references_resolve(path: Path) -> None:
    """What a compose file names exists: the build context and Dockerfile,
    every mounted file, every dependency, every secret; secret files live
    where git never sees them."""
    (doc,) = documents(path)
    here = path.parent
    services = doc["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (here / build["context"]).resolve() == REPO
            assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (here / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in doc.get("volumes", {}), f"{name}: volume {source} not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
        for secret in service.get("secrets", []):
            assert (secret if isinstance(secret, str) else secret["source"]) in doc["secrets"]
    secret_paths = [doc["secrets"][s]["file"] for s in doc["secrets"] if "file" in doc["secrets"][s]]
    secret_paths += [service["env_file"] for service in services.values() if "env_file" in service]
    ignored = (here / ".gitignore").read_text().split()
    assert all(any(p.startswith(pattern) for pattern in ignored) for p in secret_paths), secret_paths
    # A secret is a file kept out of git or the content of an environment
    # variable, never a value in the compose file.
    for name, secret in doc["secrets"].items():
        assert set(secret) in ({"file"}, {"environment"}), f"secret {name}: {secret}"


def test_compose_paths_secrets_and_commands_resolve() -> None:
    assert_compose_references_resolve(COMPOSE)
    (doc,) = documents(COMPOSE)
    services = doc["services"]
    assert {"redis", "node", "dataserver"} <= set(services)
    assert services["node"]["deploy"]["replicas"] >= 2
    # Redis runs the tuned file, mounted where its command line reads it.
    redis_service = services["redis"]
    config_target = next(v.split(":")[1] for v in redis_service["volumes"] if v.startswith("../redis/redis.conf:"))
    assert redis_service["command"][:2] == ["redis-server", config_target]
    # The node's Redis credentials come from a git-ignored file.
    assert "env_file" in services["node"]
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
    """Every whole Kubernetes manifest: the fleet's, and the Redis Cluster
    component's resources and secret template (its patch is partial)."""
    (component,) = documents(CLUSTER_COMPONENT)
    cluster = [CLUSTER_DIR / resource for resource in component["resources"]] + [CLUSTER_SECRET_EXAMPLE]
    return sorted((DEPLOY / "kubernetes").glob("*.yaml")) + cluster


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
    assert {"Deployment", "PodDisruptionBudget", "StatefulSet", "Service", "Secret", "Job",
            "NetworkPolicy"} <= set(checked)
    assert {CLUSTER_MANIFEST, CLUSTER_JOB} <= set(manifest_files())


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


# -- the fleet on a Redis Cluster: compose and Kubernetes, read ------------------------------

#: The port every Redis listens on in the deployments (redis.conf's `port`).
REDIS_PORT = 6379
#: Six nodes, one replica each: three primaries.
CLUSTER_NODES = 6


def redis_options(args: list[str]) -> dict[str, str]:
    """redis-server's ``--name value`` options (the config file, the
    first argument, left out)."""
    options: dict[str, str] = {}
    name = None
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:]
            options[name] = ""
        else:
            assert name is not None, f"{arg!r} before any option"
            options[name] = f"{options[name]} {arg}".strip()
    return options


def script_command_lines(path: Path, program: str) -> list[str]:
    """The lines of a shell script that run ``program`` (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines()
            if not line.lstrip().startswith("#") and re.search(rf"(^|\s){re.escape(program)}\s", line)]


def test_the_scripts_create_three_primaries_with_one_replica_each() -> None:
    lines = script_command_lines(CREATE_CLUSTER_SCRIPT, "redis-cli")
    (create,) = [line for line in lines if "--cluster create" in line]
    words = shlex.split(create)
    assert words[words.index("--cluster-replicas") + 1] == "1" and "--cluster-yes" in words
    assert "--user" in words and words[words.index("--user") + 1] == "ops"
    # Never a password on a command line: redis-cli reads REDISCLI_AUTH.
    for script in (CREATE_CLUSTER_SCRIPT, CLUSTER_READY_SCRIPT, CLUSTER_NODE_SCRIPT):
        for line in script_command_lines(script, "redis-cli") + script_command_lines(script, "redis-server"):
            assert not re.search(r"--(pass|askpass|masterauth|requirepass)\b", line), f"{script.name}: {line}"
    assert "REDISCLI_AUTH=$(cat \"$REDIS_OPS_PASSWORD_FILE\")" in CREATE_CLUSTER_SCRIPT.read_text()


# compose


def cluster_compose() -> dict[str, Any]:
    (doc,) = documents(CLUSTER_COMPOSE)
    return doc


def redis_node_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in doc["services"].items() if re.fullmatch(r"redis-\d+", name)}


def compose_mounts(service: dict[str, Any], here: Path) -> dict[str, Path | str]:
    """Container path -> the host file (a path) or named volume (a str) mounted there."""
    mounts: dict[str, Path | str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = (here / source).resolve() if source.startswith(".") else source
    return mounts


def compose_secret_paths(service: dict[str, Any]) -> dict[str, str]:
    """Secret name -> where the container sees it."""
    paths = {}
    for secret in service.get("secrets", []):
        source = secret if isinstance(secret, str) else secret["source"]
        target = source if isinstance(secret, str) else secret.get("target", source)
        paths[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return paths


def bus_clients(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run a huddle command talking to the bus."""
    return {name: service for name, service in doc["services"].items()
            if service.get("image", "").startswith("huddle:")
            and parse_huddle(service["command"]).command in {"node", "monitor", "inject", "tap"}}


#: How the compose file's ``${VAR}``, ``${VAR:?message}`` and ``${VAR:-default}`` look.
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def test_cluster_compose_runs_six_cluster_nodes_from_the_tuned_config() -> None:
    assert_compose_references_resolve(CLUSTER_COMPOSE)
    doc = cluster_compose()
    here = CLUSTER_COMPOSE.parent
    (single,) = documents(COMPOSE)
    nodes = redis_node_services(doc)
    assert len(nodes) == CLUSTER_NODES
    data_volumes = set()
    for name, service in nodes.items():
        # The image the single Redis runs (Redis >= 7, pinned).
        assert service["image"] == single["services"]["redis"]["image"]
        command = service["command"]
        mounts = compose_mounts(service, here)
        secrets = compose_secret_paths(service)
        # sh <the node script> <redis-server arguments>
        assert command[0] == "sh" and mounts[command[1]] == CLUSTER_NODE_SCRIPT
        config, *options = command[2:]
        assert mounts[config] == REDIS_CONF.resolve()
        flags = redis_options(options)
        assert flags["cluster-enabled"] == "yes"
        assert int(flags["cluster-node-timeout"]) > 0 and flags["cluster-config-file"]
        assert flags["aclfile"] == secrets["redis_users_acl"]
        assert not {"masterauth", "requirepass", "masteruser"} & set(flags), "passwords never on a command line"
        environment = service["environment"]
        assert environment["REDIS_ANNOUNCE_HOSTNAME"] == name
        assert environment["REDIS_OPS_PASSWORD_FILE"] == secrets["redis_ops_password"]
        # The ops password is copied for the user Redis runs as, readable by it alone.
        (ops_secret,) = [s for s in service["secrets"] if isinstance(s, dict)]
        assert service["user"].split(":")[0] == ops_secret["uid"] and ops_secret["mode"] == 0o400
        # Its own data (AOF, nodes.conf) where the image's workdir is.
        data_volumes.add(mounts["/data"])
        assert "probe" in service["healthcheck"]["test"][-1]
        assert service["deploy"]["resources"]["limits"]["memory"]
        assert service["restart"] == "unless-stopped"
    assert len(data_volumes) == CLUSTER_NODES and all(isinstance(v, str) for v in data_volumes)


def test_cluster_compose_forms_the_cluster_once_before_any_huddle_service_starts() -> None:
    doc = cluster_compose()
    here = CLUSTER_COMPOSE.parent
    nodes = redis_node_services(doc)
    ((name, create),) = [(n, s) for n, s in doc["services"].items()
                         if "create-cluster.sh" in " ".join(s.get("command", []))]
    mounts = compose_mounts(create, here)
    assert create["command"][0] == "sh" and mounts[create["command"][1]] == CREATE_CLUSTER_SCRIPT
    # Every Redis node, by its service name, once each.
    seeds = create["command"][2:]
    assert sorted(seeds) == sorted(f"{node}:{REDIS_PORT}" for node in nodes)
    assert create["depends_on"] == {node: {"condition": "service_healthy"} for node in nodes}
    assert create["environment"]["REDIS_OPS_PASSWORD_FILE"] == compose_secret_paths(create)["redis_ops_password"]
    assert create["restart"] == "no" and create["deploy"]["resources"]["limits"]["memory"]
    # The huddle services start once it succeeded, and find the cluster by its seeds.
    clients = bus_clients(doc)
    assert {"node", "monitor"} <= set(clients)
    for client_name, client in clients.items():
        assert client["depends_on"] == {name: {"condition": "service_completed_successfully"}}, client_name
        url = client["environment"]["REDIS_URL"]
        assert "env_file" not in client, f"{client_name}: REDIS_URL from one place only"
        # The password is the environment's, filled in by compose; the URL
        # with a password there is the one huddle parses.
        assert [m.group(1) for m in COMPOSE_VARIABLE.finditer(url)] == ["HUDDLE_REDIS_PASSWORD"]
        parsed = ClusterUrl.parse(COMPOSE_VARIABLE.sub("0123abcd", url))
        assert url.startswith("redis+cluster://huddle:") and not parsed.tls
        assert sorted(parsed.seeds) == sorted((node, REDIS_PORT) for node in nodes)
        args = parse_huddle(client["command"])
        assert args.cluster_key_file == compose_secret_paths(client)["cluster_key"]
        assert client["deploy"]["resources"]["limits"]["memory"]
    assert clients["node"]["deploy"]["replicas"] >= 2


def test_cluster_compose_is_the_single_redis_fleet_but_for_the_bus() -> None:
    """Everything compose.yaml runs besides Redis runs here the same way:
    only how a service reaches the bus differs."""
    (single,) = documents(COMPOSE)
    doc = cluster_compose()
    bus_keys = {"env_file", "environment", "depends_on"}
    for name, service in single["services"].items():
        if name == "redis":
            continue
        assert name in doc["services"], f"{name} missing"
        mine = doc["services"][name]
        assert {k: v for k, v in mine.items() if k not in bus_keys} == \
            {k: v for k, v in service.items() if k not in bus_keys}, name
    assert doc["name"] != single["name"], "a project of its own: volumes and containers apart"
    assert doc["secrets"]["cluster_key"] == single["secrets"]["cluster_key"]
    assert doc["secrets"]["redis_users_acl"] == single["secrets"]["redis_users_acl"]


@pytest.mark.parametrize("path", [COMPOSE, CLUSTER_COMPOSE], ids=lambda p: p.name)
def test_compose_images_are_pinned_and_no_password_is_inline(path: Path) -> None:
    (doc,) = documents(path)
    for name, service in doc["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        if "build" in service:
            assert tag == "local"
        words = [str(w) for w in service.get("command", []) + service.get("healthcheck", {}).get("test", [])]
        assert not {"--masterauth", "--requirepass", "--askpass"} & set(words), name
        # `--pass` only for `probe`, whose ACL needs no password.
        for i, word in enumerate(words):
            if word == "--pass":
                assert words[i - 2:i] == ["--user", "probe"], name
        for variable, value in (service.get("environment") or {}).items():
            text = str(value)
            if "://" in text:
                userinfo = text.split("://", 1)[1].rpartition("@")[0]
                password = userinfo.partition(":")[2]
                assert not password or COMPOSE_VARIABLE.fullmatch(password), f"{name}: {variable} holds a password"
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", variable) and not variable.endswith("_FILE"):
                assert COMPOSE_VARIABLE.fullmatch(text), f"{name}: {variable} inline"


# Kubernetes


def cluster_component() -> dict[str, Any]:
    (doc,) = documents(CLUSTER_COMPONENT)
    return doc


def cluster_statefulset() -> dict[str, Any]:
    return the_document(CLUSTER_MANIFEST, "StatefulSet")


def cluster_pod_names() -> list[str]:
    """The Redis pods' stable DNS names, as seen from the namespace."""
    statefulset = cluster_statefulset()
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    return [f"{name}-{i}.{service}" for i in range(statefulset["spec"]["replicas"])]


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload in ``docs``."""
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]) for d in docs
            if d.get("kind") in {"Deployment", "StatefulSet", "Job", "DaemonSet"}]


def assert_pod_is_restricted_and_bounded(where: str, template: dict[str, Any]) -> None:
    """The namespace's `restricted` Pod Security profile, the fleet's own
    conventions (read-only root, no token), and resources: requests for CPU
    and memory, a memory limit."""
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False, where
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, where
    assert context["seccompProfile"]["type"] == "RuntimeDefault", where
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and resources["limits"]["memory"], where
        repository, _, tag = container["image"].rpartition(":")
        assert repository and tag and tag != "latest", f"{where}: {container['image']} is not pinned"


def test_cluster_component_references_resolve_and_never_applies_the_secret_template() -> None:
    component = cluster_component()
    assert component["kind"] == "Component"
    for resource in component["resources"]:
        assert (CLUSTER_DIR / resource).is_file(), resource
    patch_files = [p["path"] for p in component["patches"] if "path" in p]
    assert patch_files == [CLUSTER_NODE_PATCH.name]
    for generator in component["configMapGenerator"]:
        for entry in generator["files"]:
            assert (CLUSTER_DIR / entry.split("=")[-1]).is_file(), entry
    assert CLUSTER_SECRET_EXAMPLE.name not in component["resources"], "placeholders must never be applied"
    # Every ConfigMap a pod mounts is generated, here or by the fleet's
    # kustomization (the tuned redis.conf); every Secret it reads is in the
    # template, with the keys it reads.
    (base,) = documents(KUSTOMIZATION)
    generated = {g["name"] for g in component["configMapGenerator"] + base["configMapGenerator"]}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in documents(CLUSTER_SECRET_EXAMPLE)}
    docs = [d for r in component["resources"] for d in documents(CLUSTER_DIR / r)] + documents(CLUSTER_NODE_PATCH)
    for where, template in pod_templates(docs):
        pod = template["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in generated, f"{where}: {volume}"
            if "secret" in volume:
                keys = secrets[volume["secret"]["secretName"]]
                assert {item["key"] for item in volume["secret"]["items"]} <= set(keys), f"{where}: {volume}"
        for container in pod["containers"]:
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}) or {}
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], f"{where}: {variable}"


def test_cluster_statefulset_runs_six_cluster_nodes_like_the_single_redis() -> None:
    statefulset = cluster_statefulset()
    spec = statefulset["spec"]
    assert spec["replicas"] == CLUSTER_NODES
    # Not ready before the cluster exists, so all six must start at once.
    assert spec["podManagementPolicy"] == "Parallel"
    headless = the_document(CLUSTER_MANIFEST, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    single_pod = the_document(REDIS_MANIFEST, "StatefulSet")["spec"]["template"]["spec"]
    (single,) = single_pod["containers"]
    assert container["image"] == single["image"]
    assert pod["securityContext"] == single_pod["securityContext"]
    assert container["resources"] == single["resources"] and container["securityContext"] == single["securityContext"]
    assert_pod_is_restricted_and_bounded("StatefulSet", spec["template"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volume_of(path: str) -> dict[str, Any]:
        return volumes[mounts[str(Path(path).parent)]]

    # sh <the node script from the scripts ConfigMap> <redis-server arguments>
    assert container["command"][0] == "sh"
    script = volume_of(container["command"][1])["configMap"]["name"]
    assert script == "huddle-redis-cluster-scripts" and Path(container["command"][1]).name == CLUSTER_NODE_SCRIPT.name
    config, *options = container["args"]
    # The same tuned config and ACL file as the single Redis, mounted the same way.
    assert volume_of(config)["configMap"]["name"] == "huddle-redis-config" and config == single["args"][0]
    flags = redis_options(options)
    assert flags["aclfile"] == single["args"][2]
    assert volume_of(flags["aclfile"])["secret"]["secretName"] == "huddle-redis-acl"
    assert flags["cluster-enabled"] == "yes" and int(flags["cluster-node-timeout"]) > 0
    assert not {"masterauth", "requirepass", "masteruser"} & set(flags)
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_ANNOUNCE_HOSTNAME"]["value"] == f"$(POD_NAME).{spec['serviceName']}"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ops_file = env["REDIS_OPS_PASSWORD_FILE"]["value"]
    ops_volume = volume_of(ops_file)["secret"]
    assert [item["path"] for item in ops_volume["items"]] == [Path(ops_file).name]
    # Both ports, named, in the Service and in the pod.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"redis": REDIS_PORT, "cluster-bus": REDIS_PORT + 10000}
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == ports
    # Probes: loaded (startup), in a whole cluster and in sync (readiness), the port (liveness).
    assert "probe" in container["startupProbe"]["exec"]["command"][-1]
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[0] == "sh" and volume_of(readiness[1])["configMap"]["name"] == script
    assert Path(readiness[1]).name == CLUSTER_READY_SCRIPT.name
    assert container["livenessProbe"]["tcpSocket"]["port"] == "redis"
    # The data (AOF, nodes.conf) on the pod's own volume.
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts["/data"] == claim["metadata"]["name"]
    # One Redis pod at a time, and only within the budget.
    budget = the_document(CLUSTER_MANIFEST, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    for doc in documents(CLUSTER_MANIFEST) + documents(CLUSTER_JOB):
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "huddle"


def test_cluster_network_policy_lets_clients_and_the_cluster_bus_in() -> None:
    policy = the_document(CLUSTER_MANIFEST, "NetworkPolicy")
    labels = cluster_statefulset()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()

    def allowed(pod_labels: dict[str, str]) -> set[int]:
        return {port["port"] for rule in policy["spec"]["ingress"]
                if any(peer["podSelector"]["matchLabels"].items() <= pod_labels.items() for peer in rule["from"])
                for port in rule["ports"]}

    job_labels = the_document(CLUSTER_JOB, "Job")["spec"]["template"]["metadata"]["labels"]
    node_labels = the_document(NODE_MANIFEST, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert allowed(labels) == {REDIS_PORT, REDIS_PORT + 10000}
    assert allowed(job_labels) == allowed(node_labels) == {REDIS_PORT}


def test_cluster_job_creates_the_cluster_from_the_statefulset_pods() -> None:
    job = the_document(CLUSTER_JOB, "Job")
    template = job["spec"]["template"]
    assert_pod_is_restricted_and_bounded("Job", template)
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["image"] == cluster_statefulset()["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert container["command"][0] == "sh" and Path(container["command"][1]).name == CREATE_CLUSTER_SCRIPT.name
    assert volumes[mounts[str(Path(container["command"][1]).parent)]]["configMap"]["name"] == \
        "huddle-redis-cluster-scripts"
    # Every pod of the StatefulSet, by its stable name.
    assert container["args"] == [f"{name}:{REDIS_PORT}" for name in cluster_pod_names()]
    env = {e["name"]: e["value"] for e in container["env"]}
    ops_file = env["REDIS_OPS_PASSWORD_FILE"]
    assert volumes[mounts[str(Path(ops_file).parent)]]["secret"]["secretName"] == "huddle-redis-ops"


def test_cluster_patch_points_the_nodes_at_every_redis_pod() -> None:
    (patch,) = documents(CLUSTER_NODE_PATCH)
    deployment = the_document(NODE_MANIFEST, "Deployment")
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", deployment["metadata"]["name"])
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == node_container()[1]["name"]
    env = container["env"]
    names = [e["name"] for e in env]
    url = env[names.index("REDIS_URL")]
    assert url["valueFrom"] is None, "the base's secretKeyRef is replaced, not merged"
    # The password is a variable defined before the URL, from a Secret.
    variables = re.findall(r"\$\((\w+)\)", url["value"])
    assert variables == ["REDIS_PASSWORD"]
    password = env[names.index("REDIS_PASSWORD")]
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL") and "secretKeyRef" in password["valueFrom"]
    parsed = ClusterUrl.parse(url["value"].replace("$(REDIS_PASSWORD)", "0123abcd"))
    assert url["value"].startswith("redis+cluster://huddle:$(REDIS_PASSWORD)@")
    assert list(parsed.seeds) == [(name, REDIS_PORT) for name in cluster_pod_names()]


def kustomize_with_the_cluster_component(tmp_path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the fleet with the Redis Cluster component
    turned on, as the README says (one line added to a copy of
    ops/deploy/kustomization.yaml)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the component's files are checked above)")
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets"))
    (kustomization,) = documents(copy / "kustomization.yaml")
    kustomization["components"] = [str(CLUSTER_DIR.relative_to(DEPLOY))]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def test_kubectl_kustomize_with_the_cluster_component_follows_the_schemas_and_wires_the_fleet(
        tmp_path: Path) -> None:
    docs = kustomize_with_the_cluster_component(tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "huddle"
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    # The single Redis is gone but for its config, which the cluster uses.
    single_names = {d["metadata"]["name"] for d in documents(REDIS_MANIFEST)}
    assert not single_names & {d["metadata"]["name"] for d in docs}
    assert set(by_kind["StatefulSet"]) == {cluster_statefulset()["metadata"]["name"]}
    assert set(by_kind["Job"]) == {the_document(CLUSTER_JOB, "Job")["metadata"]["name"]}
    config_maps = {name.rsplit("-", 1)[0]: doc for name, doc in by_kind["ConfigMap"].items()}
    assert config_maps["huddle-redis-config"]["data"]["redis.conf"] == REDIS_CONF.read_text()
    scripts = config_maps["huddle-redis-cluster-scripts"]["data"]
    assert scripts == {p.name: p.read_text() for p in (CLUSTER_NODE_SCRIPT, CLUSTER_READY_SCRIPT,
                                                        CREATE_CLUSTER_SCRIPT)}
    generated = set(by_kind["ConfigMap"])
    for where, template in pod_templates(docs):
        assert_pod_is_restricted_and_bounded(where, template)
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in generated, f"{where}: {volume}"
        # $(VAR) in an env value expands only a variable defined above it.
        for container in template["spec"]["containers"]:
            defined: set[str] = set()
            for variable in container.get("env", []):
                for name in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                    assert name in defined, f"{where}: {variable['name']} uses $({name}) before it is defined"
                defined.add(variable["name"])
    # The nodes' bus: every Redis pod a seed, the password from the Secret.
    node = by_kind["Deployment"]["huddle-node"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in node["env"]}
    assert set(env["REDIS_URL"]) == {"name", "value"}
    seeds = ClusterUrl.parse(env["REDIS_URL"]["value"].replace("$(REDIS_PASSWORD)", "x")).seeds
    assert list(seeds) == [(name, REDIS_PORT) for name in cluster_pod_names()]
    assert node["image"] == "huddle:local"


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
        wait_node_ready(proc, ready, log, lambda text: text == node_id)
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


# -- the Redis Cluster scripts, run --------------------------------------------------------

#: A peer whose container came back elsewhere, in the nodes.conf format of
#: Redis 7.2 (aux fields) and 7.0; this node; one not resolvable (yet); one
#: whose address is the same; a slot being imported (brackets: no globbing).
NODES_CONF = """\
aaaa 10.0.0.1:6379@16379,redis-1,tls-port=0,shard-id=s1 myself,master - 0 0 1 connected 0-5460
bbbb 10.0.0.2:6379@16379,redis-2,tls-port=0,shard-id=s2 master - 0 1700000000000 2 connected 5461-10922 [93->-cccc]
cccc 10.0.0.3:6379@16379,redis-3 master - 0 1700000000000 3 connected 10923-16383
dddd 10.0.0.4:6379@16379,redis-4,tls-port=0,shard-id=s1 slave aaaa 0 1700000000000 1 connected
eeee 10.0.0.5:6379@16379,redis-5,tls-port=0,shard-id=s2 slave bbbb 0 1700000000000 2 connected
ffff 10.0.0.6:6379@16379,,tls-port=0,shard-id=s3 slave cccc 0 1700000000000 3 connected
vars currentEpoch 6 lastVoteEpoch 0
"""


def stub_bin(directory: Path, hosts: dict[str, str], redis_server: bool = True) -> Path:
    """A directory for the front of PATH: ``getent hosts NAME`` answers from
    ``hosts``; with ``redis_server``, a ``redis-server`` that writes its
    arguments (one a line) and its standard input next to itself and exits 0."""
    directory.mkdir()
    (directory / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
    (directory / "getent").write_text(
        '#!/bin/sh\n[ "$1" = hosts ] || exit 2\n'
        f'awk -v n="$2" \'$2 == n {{ print; found = 1 }} END {{ exit !found }}\' "{directory}/hosts"\n')
    (directory / "getent").chmod(0o755)
    if redis_server:
        (directory / "redis-server").write_text(
            f'#!/bin/sh\nprintf \'%s\\n\' "$@" > "{directory}/argv"\ncat > "{directory}/stdin"\n')
        (directory / "redis-server").chmod(0o755)
    return directory


def compose_redis_node_args(service: str = "redis-1") -> list[str]:
    """The redis-server arguments the compose file gives the node script."""
    return redis_node_services(cluster_compose())[service]["command"][2:]


def run_node_script(tmp_path: Path, stub: Path, environment: dict[str, str],
                    args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{stub}:{os.environ['PATH']}", **environment}
    return subprocess.run(["sh", str(CLUSTER_NODE_SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          check=False, cwd=tmp_path, env=env)


def wait_node_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path, ok: Callable[[str], bool]) -> None:
    """Until the node's ready file says ``ok``; fails if it exits or takes too long."""
    deadline = time.monotonic() + DEADLINE
    while not (ready.exists() and ok(ready.read_text())):
        try:
            code = proc.wait(timeout=0.02)  # doubles as the poll interval
        except subprocess.TimeoutExpired:
            code = None
        assert code is None, f"node exited with {code}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"node not ready:\n{log.read_text()[-3000:]}"


def node_files(tmp_path: Path, password_text: str) -> tuple[Path, Path]:
    """A node's data directory holding NODES_CONF, and its ops password file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "nodes.conf").write_text(NODES_CONF)
    password = tmp_path / "ops.password"
    password.write_text(password_text)
    return data, password


def test_node_script_moves_peers_to_their_new_address_and_gives_the_password_on_stdin(tmp_path: Path) -> None:
    data, password = node_files(tmp_path, "s3cret-ops\n")
    # redis-1 (this node), redis-2 and redis-4 moved; redis-3 did not; redis-5 does not resolve.
    stub = stub_bin(tmp_path / "bin", {"redis-1": "10.1.0.1", "redis-2": "10.1.0.2", "redis-3": "10.0.0.3",
                                       "redis-4": "10.1.0.4"})
    args = [*compose_redis_node_args(), "--dir", str(data)]
    done = run_node_script(tmp_path, stub, {"REDIS_ANNOUNCE_HOSTNAME": "redis-1",
                                            "REDIS_OPS_PASSWORD_FILE": str(password)}, args)
    assert done.returncode == 0, done.stderr
    expected = (NODES_CONF.replace("aaaa 10.0.0.1:", "aaaa 10.1.0.1:").replace("bbbb 10.0.0.2:", "bbbb 10.1.0.2:")
                .replace("dddd 10.0.0.4:", "dddd 10.1.0.4:"))
    assert (data / "nodes.conf").read_text() == expected
    assert sorted(re.findall(r"redis-\d", done.stderr)) == ["redis-1", "redis-2", "redis-4"]
    assert [p.name for p in data.iterdir()] == ["nodes.conf"], "no temporary file left behind"
    # redis-server gets the arguments as given, its stable name, and config
    # from stdin: the password is in no argument.
    argv = (stub / "argv").read_text().splitlines()
    assert argv == [*args, "--cluster-announce-hostname", "redis-1", "-"]
    assert (stub / "stdin").read_text() == "masteruser ops\nmasterauth s3cret-ops\n"


def test_node_script_takes_its_own_address_from_the_platform_and_needs_its_name(tmp_path: Path) -> None:
    data, password = node_files(tmp_path, "pw")
    stub = stub_bin(tmp_path / "bin", {"redis-1": "10.9.9.9"})
    args = ["/etc/redis.conf", "--cluster-config-file", "nodes.conf", "--dir", str(data)]
    done = run_node_script(tmp_path, stub, {"REDIS_ANNOUNCE_HOSTNAME": "redis-1", "REDIS_ANNOUNCE_IP": "10.2.0.1",
                                            "REDIS_OPS_PASSWORD_FILE": str(password)}, args)
    assert done.returncode == 0, done.stderr
    assert (data / "nodes.conf").read_text() == NODES_CONF.replace("aaaa 10.0.0.1:", "aaaa 10.2.0.1:")
    argv = (stub / "argv").read_text().splitlines()
    assert argv[-5:] == ["--cluster-announce-hostname", "redis-1", "--cluster-announce-ip", "10.2.0.1", "-"]
    # No name: it refuses before Redis starts.
    (stub / "argv").unlink()
    refused = run_node_script(tmp_path, stub, {"REDIS_OPS_PASSWORD_FILE": str(password)}, args)
    assert refused.returncode != 0 and "REDIS_ANNOUNCE_HOSTNAME" in refused.stderr
    assert not (stub / "argv").exists()


def find_redis7_tools() -> tuple[str, str]:
    """(redis-server, redis-cli) of Redis >= 7, or skip."""
    server = find_redis7()
    if server is None:
        pytest.skip(f"no Redis >= 7 here ({INSTALL_HINT}); the cluster files are checked without it above")
    cli = Path(server).with_name("redis-cli")
    if not cli.exists():
        pytest.skip(f"no redis-cli next to {server}")
    return server, str(cli)


class ClusterFromCompose:
    """Six real redis-servers started as compose.redis-cluster.yaml starts
    them (the node script, the same arguments, the secrets init-secrets.sh
    made), on loopback: node i on ``ips[i]``, at a port of its own, and the
    services' names resolving to those addresses for the node script."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.doc = cluster_compose()
        self.services = redis_node_services(self.doc)
        self.server, self.cli = find_redis7_tools()
        self.secrets = workdir / "secrets"
        made = init_secrets(self.secrets, f"redis-1:{REDIS_PORT}")
        assert made.returncode == 0, made.stderr
        self.ports = {name: (free_port(), free_port()) for name in self.services}
        self.ips: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    # the compose file's paths, here
    def local(self, service: dict[str, Any], arg: str) -> str:
        here = CLUSTER_COMPOSE.parent
        by_secret = {"file": lambda d: self.secrets / Path(d["file"]).name,
                     "environment": lambda d: self.secrets / {"HUDDLE_REDIS_OPS_PASSWORD": "ops.password",
                                                              "HUDDLE_CLUSTER_KEYS": "cluster.key"}[d["environment"]]}
        paths: dict[str, Path | str] = dict(compose_mounts(service, here))
        for name, target in compose_secret_paths(service).items():
            definition = self.doc["secrets"][name]
            paths[target] = by_secret[next(iter(definition))](definition)
        mapped = paths.get(arg)
        return str(mapped) if isinstance(mapped, Path) else arg

    def address(self, name: str) -> str:
        return f"{self.ips[name]}:{self.ports[name][0]}"

    def local_seed(self, seed: str) -> str:
        """``redis-N:6379`` (a service name and the deployments' port) -> where that node listens here."""
        name, _, port = seed.rpartition(":")
        assert int(port) == REDIS_PORT
        return self.address(name)

    def env(self, stub: Path) -> dict[str, str]:
        return {**os.environ, "PATH": f"{stub}:{Path(self.server).parent}:{os.environ['PATH']}"}

    def start(self, ips: dict[str, str]) -> None:
        self.ips = ips
        self.starts += 1
        stub = stub_bin(self.workdir / f"bin-{self.starts}", ips, redis_server=False)
        for name, service in self.services.items():
            data = self.workdir / name
            data.mkdir(exist_ok=True)
            port, bus_port = self.ports[name]
            # What the test host must differ in: port, interface; the bus
            # port given (port + 10000 may be taken).
            argv = [self.local(service, a) for a in service["command"]] + [
                "--port", str(port), "--cluster-port", str(bus_port), "--bind", ips[name],
                "--bind-source-addr", ips[name]]
            env = {**self.env(stub), **{k: self.local(service, v) for k, v in service["environment"].items()}}
            with (self.workdir / f"{name}.log").open("ab") as out:
                self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT, cwd=data, env=env,
                                                    start_new_session=True)
        deadline = time.monotonic() + DEADLINE
        for name in self.services:
            while True:
                code = self.procs[name].poll()
                assert code is None, f"{name} exited with {code}:\n{self.log(name)}"
                with contextlib.suppress(redis.RedisError):
                    if self.ops(name).ping():
                        break
                assert time.monotonic() < deadline, f"{name} not up:\n{self.log(name)}"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(timeout=0.02)  # the poll interval

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_by_pid(proc)

    def log(self, name: str, tail: int = 3000) -> str:
        return (self.workdir / f"{name}.log").read_text()[-tail:]

    def ops(self, name: str) -> redis.Redis:
        return redis.Redis(host=self.ips[name], port=self.ports[name][0], username="ops", decode_responses=True,
                           password=(self.secrets / "ops.password").read_text().strip(), socket_timeout=5)

    def create(self) -> subprocess.CompletedProcess[str]:
        """The compose file's create service, run here."""
        (service,) = [s for s in self.doc["services"].values() if "create-cluster.sh" in " ".join(s.get("command", []))]
        argv = [self.local(service, a) for a in service["command"][:2]]
        argv += [self.local_seed(seed) for seed in service["command"][2:]]
        env = {**self.env(stub_bin(self.workdir / f"bin-create-{uuid.uuid4().hex[:6]}", self.ips, redis_server=False)),
               **{k: self.local(service, v) for k, v in service["environment"].items()},
               "CREATE_TIMEOUT_S": str(int(2 * DEADLINE))}
        return subprocess.run(argv, capture_output=True, text=True, timeout=4 * DEADLINE, check=False,
                              cwd=self.workdir, env=env)

    def roles(self) -> dict[str, tuple[str, str, int]]:
        """Service -> (node id, its role as it says itself, the port of its primary or 0)."""
        roles = {}
        for name in self.services:
            client = self.ops(name)
            replication = client.info("replication")
            roles[name] = (client.execute_command("CLUSTER", "MYID"), replication["role"],
                           int(replication.get("master_port", 0)))
        return roles

    def nodes(self) -> list[dict[str, str]]:
        """CLUSTER NODES as node 1 sees it: id, address, flags, primary, slots."""
        lines = self.ops(next(iter(self.services))).execute_command("CLUSTER", "NODES").splitlines()
        return [dict(zip(("id", "address", "flags", "primary"), line.split()[:4]), slots=" ".join(line.split()[8:]))
                for line in lines]

    def wait_until(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + DEADLINE
        while not check():
            assert time.monotonic() < deadline, f"never {what}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                next(iter(self.procs.values())).wait(timeout=0.05)  # the poll interval


@pytest.fixture(scope="module")
def compose_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterFromCompose, str]]:
    """The six nodes on 127.0.0.1, formed by the create service's script;
    yields the cluster and the script's output."""
    cluster = ClusterFromCompose(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start({name: "127.0.0.1" for name in cluster.services})
        created = cluster.create()
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr
        yield cluster, created.stdout
    finally:
        cluster.stop()


def test_the_create_service_forms_three_primaries_with_a_replica_each_once(
        compose_cluster: tuple[ClusterFromCompose, str]) -> None:
    cluster, output = compose_cluster
    assert "creating it" in output and "cluster_state:ok on every node" in output
    for name in cluster.services:
        assert cluster.ops(name).execute_command("CLUSTER", "INFO").split("cluster_state:")[1].startswith("ok")
    # Each node's own word on its role (the others' views follow by gossip).
    roles = cluster.roles()
    primaries = {name for name, role in roles.items() if role[1] == "master"}
    replicas = {name: role[2] for name, role in roles.items() if role[1] == "slave"}
    assert len(primaries) == len(replicas) == CLUSTER_NODES // 2, output
    assert sorted(replicas.values()) == sorted(cluster.ports[p][0] for p in primaries), "one replica each"
    for name in primaries:
        (me,) = [line for line in cluster.ops(name).execute_command("CLUSTER", "NODES").splitlines()
                 if "myself" in line]
        assert len(me.split()) > 8, f"{name} serves no slot: {me}"
    # Replicas sync from their primary as `ops`, with the password the node
    # script handed redis-server on stdin (without it: NOAUTH, link down).

    def in_sync() -> bool:
        return all(cluster.ops(n).info("replication")["master_link_status"] == "up" for n in replicas)

    cluster.wait_until("every replica in sync", in_sync)
    for name in cluster.services:
        assert cluster.ops(name).config_get("masterauth")["masterauth"], "set from stdin"
    # The readiness probe agrees (it asks the node on 127.0.0.1 at the given port).
    for name in cluster.services:
        ready = subprocess.run(["sh", str(CLUSTER_READY_SCRIPT), str(cluster.ports[name][0])], capture_output=True,
                               text=True, timeout=30, check=False, env={
                                   **cluster.env(cluster.workdir / "bin-1"),
                                   "REDIS_OPS_PASSWORD_FILE": str(cluster.secrets / "ops.password")})
        assert ready.returncode == 0, ready.stdout + ready.stderr
    # Once: the next `up` finds the cluster and changes nothing.
    again = cluster.create()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout and "creating it" not in again.stdout
    assert cluster.roles() == roles


def test_readiness_probe_refuses_a_node_outside_a_whole_cluster(tmp_path: Path) -> None:
    server, _ = find_redis7_tools()
    made = init_secrets(tmp_path / "secrets", "127.0.0.1:6379")
    assert made.returncode == 0, made.stderr
    port = free_port()
    # The compose node's redis-server arguments, straight to redis-server.
    _, *options = compose_redis_node_args()
    acl = compose_secret_paths(redis_node_services(cluster_compose())["redis-1"])["redis_users_acl"]
    config = [str(REDIS_CONF)] + [o.replace(acl, str(tmp_path / "secrets" / "users.acl")) for o in options]
    with (tmp_path / "redis.log").open("wb") as out:
        proc = subprocess.Popen([server, *config, "--port", str(port), "--cluster-port", str(free_port()),
                                 "--bind", "127.0.0.1", "--dir", str(tmp_path)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        env = {**os.environ, "PATH": f"{Path(server).parent}:{os.environ['PATH']}",
               "REDIS_OPS_PASSWORD_FILE": str(tmp_path / "secrets" / "ops.password")}
        deadline = time.monotonic() + DEADLINE
        while True:
            ready = subprocess.run(["sh", str(CLUSTER_READY_SCRIPT), str(port)], capture_output=True, text=True,
                                   timeout=30, check=False, env=env)
            if "cluster_state:" in ready.stdout:
                break
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()[-3000:]
            assert time.monotonic() < deadline, ready.stdout + ready.stderr
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # the poll interval
        assert ready.returncode == 1 and "cluster_state:fail" in ready.stdout
    finally:
        stop_by_pid(proc)


def test_a_node_joins_the_cluster_with_the_compose_url_as_the_huddle_user(
        compose_cluster: tuple[ClusterFromCompose, str], tmp_path: Path) -> None:
    cluster, _ = compose_cluster
    service = cluster.doc["services"]["node"]
    password = read_env_file(cluster.secrets / "bus.env")["REDIS_URL"].split(":")[2].split("@")[0]
    # compose's interpolation (the password from the environment), and the
    # services' names where they listen here.
    url = COMPOSE_VARIABLE.sub(password, service["environment"]["REDIS_URL"])
    url = re.sub(rf"redis-\d+:{REDIS_PORT}", lambda m: cluster.local_seed(m.group(0)), url)
    argv = [cluster.local(service, a) for a in service["command"]]
    argv[argv.index("--metrics-port") + 1] = "0"
    argv[argv.index("--metrics-host") + 1] = "127.0.0.1"
    argv[argv.index("--ready-file") + 1] = str(tmp_path / "ready")
    env = {**os.environ, "REDIS_URL": url}
    env.pop("HUDDLE_CLUSTER_KEY", None)
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *without_pending_options(argv)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        ready = tmp_path / "ready"
        wait_node_ready(proc, ready, log, bool)
        node_id = ready.read_text()
        # Connected to every primary, as `huddle`.
        primaries = [n for n in cluster.services if cluster.ops(n).info("replication")["role"] == "master"]
        for name in primaries:
            clients = [c for c in cluster.ops(name).client_list() if c.get("name", "").startswith(f"huddle:{node_id}")]
            assert clients and {c["user"] for c in clients} == {"huddle"}, name
        assert stop_by_pid(proc) == 0, log.read_text()[-3000:]
    finally:
        stop_by_pid(proc)


def loopback_alias_usable(ip: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((ip, 0))
        return True
    except OSError:
        return False


def test_the_cluster_forms_again_when_every_node_comes_back_on_a_new_address(tmp_path: Path) -> None:
    """`docker compose down && up`, or every Redis pod rescheduled: the
    same nodes (same nodes.conf) on new addresses. The node script finds its
    peers by their names; without it every node keeps calling the old
    addresses and the cluster stays down."""
    before = {f"redis-{i}": f"127.0.7.{i}" for i in range(1, CLUSTER_NODES + 1)}
    after = {f"redis-{i}": f"127.0.8.{i}" for i in range(1, CLUSTER_NODES + 1)}
    if not loopback_alias_usable("127.0.8.1"):
        pytest.skip("this host routes 127.0.0.1 only")
    cluster = ClusterFromCompose(tmp_path)
    try:
        cluster.start(before)
        created = cluster.create()
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr
        ids = {n["id"] for n in cluster.nodes()}
        cluster.stop()
        cluster.start(after)
        # Each node put itself, and the peers its nodes.conf knew by name
        # (a peer learnt moments before the stop may be missing: it comes
        # back by gossip), at their new addresses before Redis started.
        expected = {(n, before[n], after[n]) for n in cluster.services}
        for name in cluster.services:
            pattern = r"nodes.conf: (redis-\d+) \(\w+\) moved from (\S+) to (\S+)"
            moves = set(re.findall(pattern, cluster.log(name, 10**6)))
            assert (name, before[name], after[name]) in moves and moves <= expected, (name, moves)
        again = cluster.create()
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr
        assert "not creating anything" in again.stdout or "nothing to do" in again.stdout
        nodes = cluster.nodes()
        assert {n["id"] for n in nodes} == ids, "the same cluster, not a new one"
        assert {n["address"].split(":")[0] for n in nodes} == set(after.values())
    finally:
        cluster.stop()


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
