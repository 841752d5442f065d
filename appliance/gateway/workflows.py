"""ComfyUI workflow templates: API-format graphs on disk and where request parameters go in them.

A template file is `{"description", "defaults", "parameters": {name: [[node_id, input], ...]},
"graph": {...}}` (see appliance/workflows/). `parameters` names prompt, negative_prompt, width,
height, batch_size, seed and checkpoint. A plain graph exported from ComfyUI ("Save (API)") also
works: the parameters are then found from the sampler's links (KSampler positive/negative ->
CLIPTextEncode.text, latent_image -> width/height/batch_size, seed, CheckpointLoaderSimple).

`models.<id>.workflow` names a bundled template (`sd35_turbo`, `checkpoint`) or a path to a file.
Pure apart from reading the files (`WorkflowLibrary` caches them by path and modification time).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLED = Path(__file__).resolve().parent.parent / "workflows"
DEFAULT_TEMPLATE = "checkpoint"
PARAMETERS = ("prompt", "negative_prompt", "width", "height", "batch_size", "seed", "checkpoint")
_SAMPLERS = ("KSampler", "KSamplerAdvanced")
_LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyFluxLatentImage")


class WorkflowError(Exception):
    """A template that cannot be used (missing file, bad JSON, a parameter pointing nowhere)."""


Target = tuple[str, str]


@dataclass(frozen=True)
class Workflow:
    name: str
    graph: dict[str, Any]
    parameters: dict[str, list[Target]]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def batches(self) -> bool:
        return bool(self.parameters.get("batch_size"))

    def render(self, values: dict[str, Any]) -> dict[str, Any]:
        """A fresh graph with each given (non-None) parameter written into its inputs."""
        graph = copy.deepcopy(self.graph)
        for name, value in values.items():
            if value is None:
                continue
            for node_id, input_name in self.parameters.get(name, ()):
                graph[node_id]["inputs"][input_name] = value
        return graph

    def node_label(self, node_id: str) -> str:
        node = self.graph.get(node_id, {})
        title = node.get("_meta", {}).get("title") if isinstance(node.get("_meta"), dict) else None
        return f"node {node_id} ({title or node.get('class_type', '?')})"


def _source(graph: dict[str, Any], node: dict[str, Any], input_name: str) -> str | None:
    link = node.get("inputs", {}).get(input_name)
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in graph:
        return str(link[0])
    return None


def infer_parameters(graph: dict[str, Any]) -> dict[str, list[Target]]:
    """Where the parameters go in a plain API-format graph, found from the sampler's links."""
    params: dict[str, list[Target]] = {}
    for node_id, node in graph.items():
        kind = node.get("class_type")
        inputs = node.get("inputs", {})
        if kind in _SAMPLERS:
            seed_input = "noise_seed" if "noise_seed" in inputs else "seed"
            params.setdefault("seed", []).append((node_id, seed_input))
            for role, param in (("positive", "prompt"), ("negative", "negative_prompt")):
                src = _source(graph, node, role)
                if src and "text" in graph[src].get("inputs", {}):
                    params.setdefault(param, []).append((src, "text"))
            latent = _source(graph, node, "latent_image")
            if latent and graph[latent].get("class_type") in _LATENTS:
                for name in ("width", "height", "batch_size"):
                    params.setdefault(name, []).append((latent, name))
        elif kind == "CheckpointLoaderSimple":
            params.setdefault("checkpoint", []).append((node_id, "ckpt_name"))
    if "prompt" not in params:
        raise WorkflowError("cannot find where the prompt goes: no sampler linked to a CLIPTextEncode")
    return params


def _check(name: str, graph: dict[str, Any], params: dict[str, list[Target]]) -> None:
    for param, targets in params.items():
        if param not in PARAMETERS:
            raise WorkflowError(f"{name}: unknown parameter {param!r} (known: {', '.join(PARAMETERS)})")
        for node_id, input_name in targets:
            node = graph.get(node_id)
            if not isinstance(node, dict) or input_name not in node.get("inputs", {}):
                raise WorkflowError(f"{name}: parameter {param!r} points at node {node_id} input "
                                    f"{input_name!r}, which the graph does not have")


def parse_template(name: str, data: object) -> Workflow:
    if not isinstance(data, dict):
        raise WorkflowError(f"{name}: a template must be a JSON object")
    if "graph" in data:
        graph = data["graph"]
        raw = data.get("parameters") or {}
        params = {k: [(str(t[0]), str(t[1])) for t in v] for k, v in raw.items()} if raw else None
        defaults = dict(data.get("defaults") or {})
    else:
        graph, params, defaults = data, None, {}
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise WorkflowError(f"{name}: the graph must map node ids to nodes with a class_type (API format)")
    if params is None:
        params = infer_parameters(graph)
    _check(name, graph, params)
    return Workflow(name, graph, params, defaults)


def resolve(ref: str) -> Path:
    """A bundled template's path for a bare name, else `ref` as a path."""
    ref = ref or DEFAULT_TEMPLATE
    if "/" not in ref and not ref.endswith(".json"):
        return BUNDLED / f"{ref}.json"
    return Path(ref).expanduser()


class WorkflowLibrary:
    """Loaded templates, re-read when their file changes (so an edited template needs no restart)."""

    def __init__(self) -> None:
        self._loaded: dict[Path, tuple[int, Workflow]] = {}

    def load(self, ref: str) -> Workflow:
        path = resolve(ref)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError as exc:
            raise WorkflowError(f"workflow template {ref or DEFAULT_TEMPLATE!r}: cannot read {path}: "
                                f"{exc.strerror}") from None
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise WorkflowError(f"workflow template {path}: invalid JSON: {exc}") from None
        workflow = parse_template(path.stem, data)
        self._loaded[path] = (mtime, workflow)
        return workflow


def load_workflow(ref: str) -> Workflow:
    """One template, read now (for tools and tests; the gateway keeps a WorkflowLibrary)."""
    return WorkflowLibrary().load(ref)
