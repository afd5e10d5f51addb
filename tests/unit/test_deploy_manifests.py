"""Deployment files, validated offline: the kustomize overlays (rendered by tests/kustomize_lite.py) against
the pinned Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), docker-compose.yml against
the vendored compose-spec schema, plus the cross-references no schema sees (selectors, shard map, probes)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.kustomize_lite import KustomizeError, pod_template, render, smp

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ["single", "scaled", "scaled-external-redis"]
# the oldest Kubernetes minor still in upstream support when this was written; every API used is GA there
K8S_VERSION = "1.33.0"
COMPOSE_SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
COMPONENT = "app.kubernetes.io/component"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


def _by(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Label selector semantics (matchLabels + matchExpressions In/NotIn/Exists)."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        val, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and val not in expr["values"]) or (op == "NotIn" and val in expr["values"]):
            return False
        if (op == "Exists") != (val is not None) and op in ("Exists", "DoesNotExist"):
            return False
    return True


def _workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def _pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for o in objs if (t := pod_template(o)) is not None]


def test_every_resource_validates_against_the_pinned_kubernetes_schema(overlay: Any) -> None:
    _, objs = overlay
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_schema_error_is_caught() -> None:
    """The validator is not a no-op: a misspelled field and a wrong type both fail."""
    objs = render(K8S / "overlays" / "scaled")
    sts = _by(objs, "StatefulSet")["dowse-indexer"]
    bad = smp(sts, {"spec": {"replica": 3}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = smp(sts, {"spec": {"replicas": "three"}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_workloads_probe_ready_and_health_and_request_resources(overlay: Any) -> None:
    _, objs = overlay
    for obj in _workloads(objs):
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert c.get("resources", {}).get("requests", {}).keys() >= {"cpu", "memory"}, c["name"]
            if c["image"].startswith("dowse"):
                assert c["image"] == "dowse:0.1.0"  # the base's images transformer ran
                assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
                assert c["livenessProbe"]["httpGet"]["path"] == "/health"
                names = {p["name"] for p in c["ports"]}
                assert c["readinessProbe"]["httpGet"]["port"] in names
            assert {e["configMapRef"]["name"] for e in c.get("envFrom", [])} <= set(_by(objs, "ConfigMap"))


def _secret_env(c: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: f"{e['valueFrom']['secretKeyRef']['name']}/{e['valueFrom']['secretKeyRef']['key']}"
        for e in c.get("env", [])
        if "valueFrom" in e
    }


def test_auth_settings_reach_every_role(overlay: Any) -> None:
    """Gateways enforce keys (admin key from the Secret); split embedder / indexer roles and the gateways
    that call them share the service token; the batch Job sends a key (docs/security.md)."""
    _, objs = overlay
    for tmpl in _pods(objs):
        for c in tmpl["spec"]["containers"]:
            if not c["image"].startswith("dowse"):
                continue
            role = c["args"][1] if c.get("args") and c["args"][0] == "--role" else None
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            secrets = _secret_env(c)
            if c.get("command") == ["dowse"]:  # the index Job
                assert secrets == {"DOWSE_API_KEY": "dowse-auth/admin-key"}
            elif role in (None, "gateway"):
                assert (
                    env["DOWSE_AUTH"] == "required" and secrets["DOWSE_ADMIN_KEY"] == "dowse-auth/admin-key"
                )
                if role == "gateway":
                    assert secrets["DOWSE_SERVICE_TOKEN"] == "dowse-auth/service-token"
            else:
                assert secrets == {"DOWSE_SERVICE_TOKEN": "dowse-auth/service-token"}, role


def test_selectors_find_their_pods(overlay: Any) -> None:
    """Every Service, PDB, HPA and NetworkPolicy reaches a workload of this overlay."""
    _, objs = overlay
    pods = _pods(objs)
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            assert _matches(o["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])
            assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dowse"
        elif o["kind"] == "Service":
            sel = {"matchLabels": o["spec"]["selector"]}
            targets = [p for p in pods if _matches(sel, p["metadata"]["labels"])]
            assert targets, o["metadata"]["name"]
            ports = {p["name"] for t in targets for c in t["spec"]["containers"] for p in c["ports"]}
            assert all(p["targetPort"] in ports for p in o["spec"]["ports"])
        elif o["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = o["spec"]["selector" if o["kind"] == "PodDisruptionBudget" else "podSelector"]
            assert any(_matches(sel, p["metadata"]["labels"]) for p in pods), o["metadata"]["name"]
        elif o["kind"] == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            assert ref["name"] in _by(objs, ref["kind"])


def test_single_is_one_process_with_every_role() -> None:
    objs = render(K8S / "overlays" / "single")
    (dowse,) = [o for o in _workloads(objs) if o["metadata"]["name"] == "dowse"]
    c = dowse["spec"]["template"]["spec"]["containers"][0]
    assert dowse["spec"]["replicas"] == 1 and "--role" not in c.get("args", [])
    assert dowse["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {o["kind"] for o in objs} == {"ConfigMap", "Service", "StatefulSet", "NetworkPolicy"}


@pytest.mark.parametrize("name", ["scaled", "scaled-external-redis"])
def test_scaled_shard_map_matches_the_indexer_statefulset(name: str) -> None:
    objs = render(K8S / "overlays" / name)
    sts = _by(objs, "StatefulSet")["dowse-indexer"]
    svc = _by(objs, "Service")[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None"  # headless: a DNS name per shard pod
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    gw = _by(objs, "Deployment")["dowse-gateway"]["spec"]["template"]["spec"]["containers"][0]
    urls = next(e["value"] for e in gw["env"] if e["name"] == "DOWSE_INDEXER_URL").split(",")
    n = sts["spec"]["replicas"]
    assert n == 3
    assert urls == [f"http://dowse-indexer-{i}.dowse-indexer:8000" for i in range(n)]
    assert {"dowse-embedder", "dowse-gateway"} <= set(_by(objs, "HorizontalPodAutoscaler"))
    assert {"dowse-embedder", "dowse-gateway", "dowse-indexer"} <= set(_by(objs, "PodDisruptionBudget"))
    job = _by(objs, "Job")["dowse-index"]
    assert job["spec"]["suspend"] is True and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", ["scaled", "scaled-external-redis"])
def test_embedder_and_indexer_are_cluster_internal(name: str) -> None:
    """Each internal tier has a policy; the union of its allowed peers is Dowse pods, never the world."""
    objs = render(K8S / "overlays" / name)
    policies = list(_by(objs, "NetworkPolicy").values())
    internal = ["embedder", "indexer"] + (["redis"] if "dowse-redis" in _by(objs, "StatefulSet") else [])
    for comp in internal:
        labels = {"app.kubernetes.io/name": "dowse", COMPONENT: comp}
        mine = [p for p in policies if _matches(p["spec"]["podSelector"], labels)]
        assert mine and all("Ingress" in p["spec"]["policyTypes"] for p in mine), comp
        for rule in (r for p in mine for r in p["spec"].get("ingress", [])):
            assert rule.get("from"), f"{comp}: a rule without 'from' admits every source"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{comp}: {peer}"  # no ipBlock, no namespaceSelector
        outside = {"app.kubernetes.io/name": "curl"}
        gateway = {"app.kubernetes.io/name": "dowse", COMPONENT: "gateway"}
        peers = [pe["podSelector"] for p in mine for r in p["spec"]["ingress"] for pe in r["from"]]
        assert not any(_matches(s, outside) for s in peers) and any(_matches(s, gateway) for s in peers)
    gw = {"app.kubernetes.io/name": "dowse", COMPONENT: "gateway"}
    assert not [p for p in policies if _matches(p["spec"]["podSelector"], gw)]  # the gateway is the way in


def test_external_redis_overlay_drops_the_redis_pod_and_names_a_cluster() -> None:
    objs = render(K8S / "overlays" / "scaled-external-redis")
    assert "dowse-redis" not in _by(objs, "StatefulSet") and "dowse-redis" not in _by(objs, "Service")
    data = _by(objs, "ConfigMap")["dowse-config"]["data"]
    assert data["DOWSE_REDIS_URL"].startswith("redis+cluster://")
    assert data["DOWSE_CACHE_STORE_REPLICAS"] == "1"
    assert data["DOWSE_LOG_JSON"] == "true"  # merged, not replaced


def test_renderer_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\npatches: [{path: p.yaml}]\n")
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    with pytest.raises(KustomizeError, match="not found"):
        render(tmp_path)


def test_strategic_merge_by_name_and_json6902(tmp_path: Path) -> None:
    base = {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}, {"name": "b"}]}}
    out = smp(base, {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}})
    assert out["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert [c["name"] for c in out["spec"]["containers"]] == ["a", "b"]
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [a.yaml]\npatches:\n  - target: {kind: ConfigMap, name: a}\n"
        "    patch: '[{op: replace, path: /data/k, value: v2}, {op: add, path: /data/n, value: x}]'\n"
    )
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v1}\n")
    assert render(tmp_path)[0]["data"] == {"k": "v2", "n": "x"}


# ---------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _compose_validator() -> jsonschema.protocols.Validator:
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256  # the vendored file, unmodified
    schema = json.loads(raw)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_validates_against_the_compose_spec() -> None:
    validator = _compose_validator()
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    bad = _compose()
    bad["services"]["gateway"]["depends_on"] = "redis"  # wrong type
    bad["services"]["embedder"]["restart_policy"] = "always"  # no such field
    assert len(list(validator.iter_errors(bad))) >= 2


def _active(compose: dict[str, Any], profile: str | None) -> dict[str, Any]:
    return {n: s for n, s in compose["services"].items() if not s.get("profiles") or profile in s["profiles"]}


@pytest.mark.parametrize(
    ("profile", "shards"), [("single", ["indexer"]), ("scaled", ["indexer-0", "indexer-1"])]
)
def test_compose_profiles_wire_the_shard_map(profile: str, shards: list[str]) -> None:
    compose = _compose()
    active = _active(compose, profile)
    indexers = sorted(n for n, s in active.items() if s.get("command") == ["--role", "indexer"])
    gateways = [s for s in active.values() if s.get("command") == ["--role", "gateway"]]
    assert indexers == shards and len(gateways) == 1
    env = gateways[0]["environment"]
    assert env["DOWSE_INDEXER_URL"].split(",") == [f"http://{n}:8000" for n in shards]
    volumes = [active[n]["volumes"][0].split(":")[0] for n in shards]
    assert len(set(volumes)) == len(shards) and set(volumes) <= set(compose["volumes"])  # own volume each
    for name, svc in active.items():
        for dep in svc.get("depends_on", {}):
            assert dep in active, f"{profile}: {name} depends on {dep}, not started in this profile"
        for url in [v for k, v in svc.get("environment", {}).items() if k.endswith("_URL")]:
            for host in re.findall(r"//([a-z0-9-]+):", url):
                assert host in active, f"{profile}: {name} calls {host}"
    assert set(_active(compose, None)) == {"redis", "embedder"}
    # auth (docs/security.md): the service token everywhere, keys at the gateway
    for name, svc in active.items():
        if name == "redis":
            continue
        assert svc["environment"]["DOWSE_SERVICE_TOKEN"].startswith("${DOWSE_SERVICE_TOKEN:?")
        if svc["command"] == ["--role", "gateway"]:
            assert svc["environment"]["DOWSE_AUTH"] == "required"
            assert svc["environment"]["DOWSE_ADMIN_KEY"].startswith("${DOWSE_ADMIN_KEY:?")


def test_index_job_runs_a_valid_dowse_command() -> None:
    """The batch Job's command line parses with the real CLI (option names and values)."""
    import typer.main

    from services.cli import app

    job = _by(render(K8S / "overlays" / "scaled"), "Job")["dowse-index"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["dowse"]
    group: Any = typer.main.get_command(app)  # typer's own click: duck-typed
    sub = group.get_command(group.make_context("dowse", [c["args"][0]]), c["args"][0])
    assert sub is not None
    ctx = sub.make_context(c["args"][0], list(c["args"][1:]))
    assert ctx.params["engine"] == "ray" and ctx.params["indexer_url"] == "http://dowse:80"
    with pytest.raises(Exception, match="no-such-option"):
        sub.make_context("index", ["/corpus/x.jsonl", "-c", "x", "--no-such-option"])
