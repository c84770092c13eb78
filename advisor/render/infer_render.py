"""Render the inference files of ``dsadvise generate --task infer`` from an :class:`InferPlan`: a pure function
from the plan to file contents (templates under ``templates/infer/``; values reach them through the escaping
filters of :mod:`advisor.render.render`).

``device-map-auto`` → ``infer_device_map.py`` + ``launch_device_map.sh``; ``replica-per-gpu`` →
``infer_replicas.py`` + ``launch_replicas.sh``; always ``README.md`` and ``dsadvise.json`` (the plan and the proxy
model ``dsadvise dry-run`` builds).
"""

from __future__ import annotations

import json

from ..catalog.models import ResolvedModel
from ..formatting import fmt_bytes
from ..specs import HardwareSpec
from .infer_files import DESCRIPTIONS, EXECUTABLE, FILES, MANIFEST  # noqa: F401 (EXECUTABLE: re-exported)
from .infer_plan import MIB, InferPlan, LayoutPlan
from .proxy import proxy_hf_config

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "pure-bf16": "bfloat16"}


def file_names(plan: InferPlan) -> list[str]:
    """The files the plan needs, in the order they are listed."""
    names = [n for lay in plan.layouts for n in FILES[lay.layout]]
    return names + ["README.md", MANIFEST]


def _layout_view(lay: LayoutPlan) -> dict:
    view = lay.model_dump()
    for k in ("weights", "kv_cache", "transient", "overhead", "total"):
        view[f"{k}_h"] = fmt_bytes(getattr(lay, k))
    if lay.max_memory_bytes is not None:
        view["max_memory_mib"] = f"{lay.max_memory_bytes // MIB}MiB"
        view["max_memory_h"] = fmt_bytes(lay.max_memory_bytes)
        view["slack_h"] = fmt_bytes(max(0, lay.max_memory_bytes - lay.weights))
    view["speed_h"] = f"{lay.prefill_tokens_per_second:,.0f}" if lay.prefill_tokens_per_second else "-"
    return view


def context(plan: InferPlan, *, model_arg: str, gpu: str | None, main_process_port: int = 29500) -> dict:
    """Template variables for the plan (sizes formatted here, at the edge)."""
    from .. import __version__

    layouts = [_layout_view(x) for x in plan.layouts]
    by = {x["layout"]: x for x in layouts}
    precision_text = {"bf16": "bf16 weights", "pure-bf16": "bf16 weights", "fp16": "fp16 weights",
                      "fp32": "fp32 weights"}[plan.precision]
    if plan.method == "qlora":
        precision_text = "4-bit NF4 weights (bitsandbytes" + (", double quantization)" if plan.double_quant else ")") \
                         + f", {plan.precision} compute"
    names = file_names(plan)
    return {
        "version": __version__, "model_name": plan.model_name, "model_id": plan.model_id,
        "model_arg": plan.model_id or model_arg, "family": plan.family, "gpu": gpu,
        "nodes": plan.nodes, "gpus_per_node": plan.gpus_per_node, "visible": ",".join(map(str, range(plan.gpus_per_node))),
        "vram": fmt_bytes(plan.vram_bytes), "usable": fmt_bytes(plan.usable_bytes),
        "margin_pct": f"{plan.margin * 100:g}", "dtype": DTYPES[plan.precision], "attention": _attn(plan.attention),
        "quantize_4bit": plan.method == "qlora", "double_quant": plan.double_quant, "precision_text": precision_text,
        "seq_len": plan.seq_len, "prompt_len": plan.prompt_len, "max_new_tokens": plan.max_new_tokens,
        "layouts": layouts, "dm": by.get("device-map-auto"), "rp": by.get("replica-per-gpu"),
        "replicas": "replica-per-gpu" in by, "not_fitting": list(plan.not_fitting),
        "assumptions": list(plan.assumptions), "main_process_port": main_process_port,
        "files": [(n, DESCRIPTIONS[n]) for n in names],
    }


def _attn(attention: str) -> str:
    """transformers' ``attn_implementation`` for the spec's attention."""
    return {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}.get(attention, "sdpa")


def hf_config_of(model: ResolvedModel, model_arg: str) -> dict | None:
    """The real model's transformers config (for the dry-run's placement check), or None for a model given by size."""
    if model.source == "catalog":
        from ..datafiles import load_data

        entry = next((e for e in load_data("models.yaml")["models"] if e["name"] == model.name), None)
        return dict(entry["config"]) if entry is not None else None
    if model.architecture.source_config:
        return json.loads(model.architecture.source_config)
    if model.source == "config":
        from ..hf_config import load_hf_config

        try:
            return load_hf_config(model_arg)
        except Exception:
            return None
    return None


def manifest(plan: InferPlan, model: ResolvedModel, hw: HardwareSpec, model_arg: str) -> str:
    """``dsadvise.json`` for an inference folder: the plan, the hardware and the dry-run's proxy model."""
    from .. import __version__

    data = {"dsadvise_version": __version__, "task": "infer",
            "model": {"name": model.name, "source": model.source,
                      "architecture": model.architecture.model_dump(mode="json")},
            "hardware": hw.model_dump(mode="json"), "plan": plan.model_dump(mode="json"),
            "plan_dtype": DTYPES[plan.precision], "hf_config": hf_config_of(model, model_arg),
            "proxy_model": proxy_hf_config(model.architecture)}
    return json.dumps(data, indent=2, ensure_ascii=True) + "\n"


def render_infer_files(plan: InferPlan, model: ResolvedModel, hw: HardwareSpec, *, model_arg: str,
                       main_process_port: int = 29500) -> dict[str, str]:
    """File name → contents for the inference layouts of ``plan`` (nothing is written)."""
    from .render import environment

    env = environment()
    gpu = hw.gpu.name if hw.gpu is not None else None
    base = context(plan, model_arg=model_arg, gpu=gpu, main_process_port=main_process_port)
    out: dict[str, str] = {}
    for name in file_names(plan):
        if name == MANIFEST:
            out[name] = manifest(plan, model, hw, model_arg)
            continue
        ctx = dict(base)
        if name in FILES["device-map-auto"]:
            ctx["lay"] = base["dm"]
        elif name in FILES["replica-per-gpu"]:
            ctx["lay"] = base["rp"]
        text = env.get_template(f"infer/{name}.j2").render(**ctx)
        out[name] = text if text.endswith("\n") else text + "\n"
    return out


def validate_infer_files(files: dict[str, str]) -> list[str]:
    """Problems with rendered inference files (empty when every Python file compiles, every shell script passes
    ``bash -n`` where bash exists, and the manifest is JSON)."""
    import shutil
    import subprocess

    problems = []
    for name, text in files.items():
        if name.endswith(".py"):
            try:
                compile(text, name, "exec")
            except SyntaxError as exc:
                problems.append(f"{name}: line {exc.lineno}: {exc.msg}")
        elif name.endswith(".json"):
            try:
                json.loads(text)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        elif name.endswith(".sh") and shutil.which("bash"):
            r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
            if r.returncode != 0:
                problems.append(f"{name}: {r.stderr.strip()}")
    return problems
