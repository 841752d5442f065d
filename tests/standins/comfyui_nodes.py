"""Node classes the ComfyUI stand-in knows, their ``/object_info``, and prompt validation (§3.2).

Owns: the input specs of the built-in nodes needed for text-to-image (SD1.5-style and SD3.5 graphs),
the installed model lists, and ``validate_prompt``, which follows ComfyUI's ``execution.py``
step by step (same error types, messages, ``node_errors`` shape and ``dependent_outputs``).
Must not: execute anything or do network I/O.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field

MAX_RESOLUTION = 16384
MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
DEFAULT_MODELS = {
    "checkpoints": ["model.safetensors", "sd3.5_large_fp8_scaled.safetensors", "sd3.5_large_turbo.safetensors"],
    "text_encoders": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"],
}
# Folders ComfyUI registers (folder_paths.folder_names_and_paths); "clip" is the legacy text_encoders.
MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "clip",
    "unet",
)
SAMPLERS = [
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "ipndm",
    "deis",
    "res_multistep",
    "gradient_estimation",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
]
SCHEDULERS = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]


class Models:
    """Installed model files per folder: scanned from the models directory, else a built-in list."""

    def __init__(self, models_dir: str | None) -> None:
        self.models_dir = models_dir

    def folders(self) -> list[str]:
        return list(MODEL_FOLDERS)

    def files(self, folder: str) -> list[str]:
        if self.models_dir is None:
            return list(DEFAULT_MODELS.get("text_encoders" if folder == "clip" else folder, []))
        # text_encoders and the legacy clip folder are one logical folder in ComfyUI.
        subdirs = ("text_encoders", "clip") if folder in ("text_encoders", "clip") else (folder,)
        found: set[str] = set()
        for sub in subdirs:
            root = os.path.join(self.models_dir, sub)
            for dirpath, _dirs, names in os.walk(root, followlinks=True):
                for name in names:
                    if name.endswith(MODEL_EXTENSIONS):
                        found.add(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return sorted(found)


@dataclass(frozen=True)
class NodeDef:
    name: str
    display_name: str
    category: str
    description: str
    required: dict[str, tuple[object, dict[str, object]]]
    return_types: tuple[str, ...]
    output_node: bool = False
    return_names: tuple[str, ...] | None = None
    hidden: dict[str, str] = field(default_factory=dict)


def node_defs(models: Models) -> dict[str, NodeDef]:
    """Built fresh for each use so model lists reflect the files installed right now."""
    size: dict[str, object] = {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 8}
    sd3_size: dict[str, object] = {**size, "step": 16}
    batch: dict[str, object] = {"default": 1, "min": 1, "max": 4096}
    return {
        n.name: n
        for n in (
            NodeDef(
                "CheckpointLoaderSimple",
                "Load Checkpoint",
                "loaders",
                "Loads a diffusion model checkpoint.",
                {"ckpt_name": (models.files("checkpoints"), {})},
                ("MODEL", "CLIP", "VAE"),
            ),
            NodeDef(
                "TripleCLIPLoader",
                "TripleCLIPLoader",
                "advanced/loaders",
                "[Recipes]\n\nsd3: clip-l, clip-g, t5",
                {f"clip_name{i}": (models.files("text_encoders"), {}) for i in (1, 2, 3)},
                ("CLIP",),
            ),
            NodeDef(
                "EmptyLatentImage",
                "Empty Latent Image",
                "latent",
                "Create a new batch of empty latent images to be denoised via sampling.",
                {
                    "width": ("INT", {**size, "default": 512}),
                    "height": ("INT", {**size, "default": 512}),
                    "batch_size": ("INT", batch),
                },
                ("LATENT",),
            ),
            NodeDef(
                "EmptySD3LatentImage",
                "EmptySD3LatentImage",
                "latent/sd3",
                "",
                {"width": ("INT", sd3_size), "height": ("INT", sd3_size), "batch_size": ("INT", batch)},
                ("LATENT",),
            ),
            NodeDef(
                "CLIPTextEncode",
                "CLIP Text Encode (Prompt)",
                "conditioning",
                "Encodes a text prompt using a CLIP model into an embedding.",
                {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})},
                ("CONDITIONING",),
            ),
            NodeDef(
                "KSampler",
                "KSampler",
                "sampling",
                "Uses the provided model, positive and negative conditioning to denoise the latent image.",
                {
                    "model": ("MODEL", {}),
                    "seed": (
                        "INT",
                        {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True},
                    ),
                    "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                    "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                    "sampler_name": (SAMPLERS, {}),
                    "scheduler": (SCHEDULERS, {}),
                    "positive": ("CONDITIONING", {}),
                    "negative": ("CONDITIONING", {}),
                    "latent_image": ("LATENT", {}),
                    "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                },
                ("LATENT",),
            ),
            NodeDef(
                "VAEDecode",
                "VAE Decode",
                "latent",
                "Decodes latent images back into pixel space images.",
                {"samples": ("LATENT", {}), "vae": ("VAE", {})},
                ("IMAGE",),
            ),
            NodeDef(
                "SaveImage",
                "Save Image",
                "image",
                "Saves the input images to your ComfyUI output directory.",
                {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                (),
                output_node=True,
                hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            ),
            NodeDef(
                "PreviewImage",
                "Preview Image",
                "image",
                "Saves the input images to your ComfyUI temp directory.",
                {"images": ("IMAGE", {})},
                (),
                output_node=True,
                hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            ),
        )
    }


def object_info(node: NodeDef) -> dict[str, object]:
    inputs: dict[str, object] = {"required": {k: [t, o] if o else [t] for k, (t, o) in node.required.items()}}
    if node.hidden:
        inputs["hidden"] = dict(node.hidden)
    return {
        "input": inputs,
        "input_order": {"required": list(node.required), **({"hidden": list(node.hidden)} if node.hidden else {})},
        "output": list(node.return_types),
        "output_is_list": [False] * len(node.return_types),
        "output_name": list(node.return_names or node.return_types),
        "name": node.name,
        "display_name": node.display_name,
        "description": node.description,
        "python_module": "nodes",
        "category": node.category,
        "output_node": node.output_node,
    }


# --- validation (mirrors execution.validate_prompt / validate_inputs) -----------------------------

Error = dict[str, object]
Prompt = dict[str, dict[str, object]]


def _err(kind: str, message: str, details: str, extra: dict[str, object]) -> Error:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _type_matches(received: str, wanted: object) -> bool:
    if not isinstance(wanted, str):
        return False
    if received == wanted or "*" in (received, wanted):
        return True
    return bool(set(received.split(",")) & set(wanted.split(",")))


def _validate_inputs(
    prompt: Prompt, node_id: str, defs: dict[str, NodeDef], validated: dict[str, tuple[bool, list[Error], str]]
) -> tuple[bool, list[Error], str]:
    if node_id in validated:
        return validated[node_id]
    node = prompt[node_id]
    inputs = node["inputs"]
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs of node {node_id} must be an object")
    spec = defs[str(node["class_type"])]
    errors: list[Error] = []
    valid = True
    for name, (wanted, opts) in spec.required.items():
        info = [wanted, opts]
        if name not in inputs:
            errors.append(_err("required_input_missing", "Required input is missing", name, {"input_name": name}))
            continue
        val = inputs[name]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    _err(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        {"input_name": name, "input_config": info, "received_value": val},
                    )
                )
                continue
            source_id, slot = val
            source = prompt[source_id]  # KeyError for a missing node, reported as an exception (as upstream)
            received = defs[str(source["class_type"])].return_types[slot]
            if not _type_matches(received, wanted):
                errors.append(
                    _err(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({received}) mismatch input_type({wanted})",
                        {"input_name": name, "input_config": info, "received_type": received, "linked_node": val},
                    )
                )
                continue
            try:
                if not _validate_inputs(prompt, source_id, defs, validated)[0]:
                    valid = False
            except Exception as ex:
                valid = False
                validated[source_id] = (
                    False,
                    [
                        _err(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            str(ex),
                            {
                                "input_name": name,
                                "input_config": info,
                                "exception_message": str(ex),
                                "exception_type": type(ex).__name__,
                                "traceback": traceback.format_tb(ex.__traceback__),
                                "linked_node": val,
                            },
                        )
                    ],
                    source_id,
                )
            continue
        try:
            if isinstance(val, dict) and "__value__" in val:
                val = val["__value__"]
            if wanted == "INT":
                val = int(val)
            elif wanted == "FLOAT":
                val = float(val)
            elif wanted == "STRING":
                val = str(val)
            inputs[name] = val
        except Exception as ex:
            errors.append(
                _err(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {wanted} value",
                    f"{name}, {val}, {ex}",
                    {"input_name": name, "input_config": info, "received_value": val, "exception_message": str(ex)},
                )
            )
            continue
        if "min" in opts and val < opts["min"]:
            errors.append(
                _err(
                    "value_smaller_than_min",
                    f"Value {val} smaller than min of {opts['min']}",
                    name,
                    {"input_name": name, "input_config": info, "received_value": val},
                )
            )
            continue
        if "max" in opts and val > opts["max"]:
            errors.append(
                _err(
                    "value_bigger_than_max",
                    f"Value {val} bigger than max of {opts['max']}",
                    name,
                    {"input_name": name, "input_config": info, "received_value": val},
                )
            )
            continue
        if isinstance(wanted, list) and val not in wanted:
            listed, config = (f"(list of length {len(wanted)})", None) if len(wanted) > 20 else (str(wanted), info)
            errors.append(
                _err(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{val}' not in {listed}",
                    {"input_name": name, "input_config": config, "received_value": val},
                )
            )
    result = (not errors and valid, errors, node_id)
    validated[node_id] = result
    return result


def validate_prompt(
    prompt: object, defs: dict[str, NodeDef], partial_targets: list[str] | None
) -> tuple[bool, Error | None, list[str], dict[str, object]]:
    """Returns (ok, error, outputs_to_execute, node_errors) like ``execution.validate_prompt``."""
    if not isinstance(prompt, dict):
        return False, _err("invalid_prompt", "Prompt must be an object mapping node ids to nodes", "", {}), [], {}
    outputs: list[str] = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type not in defs:
            title = (node.get("_meta") or {}).get("title") if isinstance(node, dict) else None
            shown = title or class_type or node_id
            return (
                False,
                _err(
                    "missing_node_type",
                    f"Node '{shown}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    {"node_id": node_id, "class_type": class_type, "node_title": shown},
                ),
                [],
                {},
            )
        if defs[class_type].output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    if not outputs:
        return False, _err("prompt_no_outputs", "Prompt has no outputs", "", {}), [], {}
    good: list[str] = []
    failures: list[tuple[str, list[Error]]] = []
    node_errors: dict[str, dict[str, object]] = {}
    validated: dict[str, tuple[bool, list[Error], str]] = {}
    for out in outputs:
        try:
            ok, reasons, _ = _validate_inputs(prompt, out, defs, validated)
        except Exception as ex:
            ok, reasons = (
                False,
                [
                    _err(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(ex),
                        {"exception_type": type(ex).__name__, "traceback": traceback.format_tb(ex.__traceback__)},
                    )
                ],
            )
            validated[out] = (False, reasons, out)
        if ok:
            good.append(out)
            continue
        failures.append((out, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(out)  # type: ignore[attr-defined]
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons)
        return (
            False,
            _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details, {}),
            [],
            dict(node_errors),
        )
    return True, None, good, dict(node_errors)
