"""A small offline kustomize renderer for the subset k8s/ uses (no kubectl on CI machines).

Supported kustomization fields: ``resources`` (files and directories), ``labels`` (pairs,
includeSelectors, includeTemplates), ``images`` (newName / newTag / digest), ``replicas``, ``patches``
(strategic merge from ``path`` or inline ``patch``, with ``$patch: delete``; JSON 6902 with a ``target``).
Any other field is an error, so a manifest never relies on a feature this renderer would silently skip.
Applied in kustomize's order: nested resources first, then patches, labels, replicas, images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "images", "replicas", "patches"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
Obj = dict[str, Any]


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not support, or is inconsistent."""


def _load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ident(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in ``directory`` to a list of resources."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"no kustomization.yaml in {directory}")
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}")
    out: list[Obj] = []
    for res in spec.get("resources", []):
        target = (directory / res).resolve()
        out.extend(render(target) if target.is_dir() else _load_docs(target))
    seen: set[tuple[str, str]] = set()
    for obj in out:
        if _ident(obj) in seen:
            raise KustomizeError(f"duplicate resource {_ident(obj)}")
        seen.add(_ident(obj))
    for patch in spec.get("patches", []):
        out = _apply_patch(directory, patch, out)
    for label in spec.get("labels", []):
        for obj in out:
            _add_labels(obj, label["pairs"], label.get("includeSelectors", False),
                        label.get("includeTemplates", False))  # fmt: skip
    for rep in spec.get("replicas", []):
        hits = [o for o in out if o["kind"] in WORKLOADS and o["metadata"]["name"] == rep["name"]]
        if not hits:
            raise KustomizeError(f"replicas: no workload named {rep['name']}")
        for obj in hits:
            obj["spec"]["replicas"] = int(rep["count"])
    for image in spec.get("images", []):
        for obj in out:
            _set_image(obj, image)
    return out


def _apply_patch(directory: Path, patch: Obj, objs: list[Obj]) -> list[Obj]:
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902
        target = patch.get("target")
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        hits = [o for o in objs if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
        if not hits:
            raise KustomizeError(f"patch target {target} not found")
        for obj in hits:
            for op in body:
                _json6902(obj, op)
        return objs
    if not isinstance(body, dict) or "kind" not in body:
        raise KustomizeError(f"cannot read patch {patch}")
    key = _ident(body)
    if not any(_ident(o) == key for o in objs):
        raise KustomizeError(f"patch target {key} not found")
    if body.get("$patch") == "delete":
        return [o for o in objs if _ident(o) != key]
    return [smp(o, body) if _ident(o) == key else o for o in objs]


def smp(base: Any, patch: Any) -> Any:
    """Strategic merge: maps merge key by key (null deletes), lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
            else:
                out[k] = smp(out[k], v) if k in out else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged = copy.deepcopy(base)
        for item in patch:
            idx = next((i for i, b in enumerate(merged) if b["name"] == item["name"]), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    merged.pop(idx)
            elif idx is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[idx] = smp(merged[idx], item)
        return merged
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def _json6902(obj: Obj, op: Obj) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
    parent: Any = obj
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(idx, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[idx] = copy.deepcopy(op["value"])
        elif kind == "remove":
            parent.pop(idx)
        else:
            raise KustomizeError(f"unsupported op {kind}")
        return
    if kind in ("add", "replace"):
        if kind == "replace" and last not in parent:
            raise KustomizeError(f"replace of missing path {op['path']}")
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"unsupported op {kind}")


def pod_template(obj: Obj) -> Obj | None:
    """The pod template of a workload (None for other kinds)."""
    if obj["kind"] in WORKLOADS:
        return obj["spec"]["template"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return None


def _add_labels(obj: Obj, pairs: dict[str, str], selectors: bool, templates: bool) -> None:
    obj["metadata"].setdefault("labels", {}).update(pairs)
    tmpl = pod_template(obj)
    if tmpl is not None and (templates or selectors):
        tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if selectors:
        if obj["kind"] == "Service":
            obj["spec"].setdefault("selector", {}).update(pairs)
        elif tmpl is not None and obj["kind"] != "Job":
            obj["spec"]["selector"].setdefault("matchLabels", {}).update(pairs)


def _set_image(obj: Obj, image: Obj) -> None:
    tmpl = pod_template(obj)
    if tmpl is None:
        return
    spec = tmpl["spec"]
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        ref = c["image"]
        name = ref.split("@", 1)[0]
        if ":" in name.rsplit("/", 1)[-1]:
            name = name.rsplit(":", 1)[0]
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            c["image"] = f"{new}@{image['digest']}"
        elif "newTag" in image:
            c["image"] = f"{new}:{image['newTag']}"
        else:
            c["image"] = new + ref[len(name) :]
