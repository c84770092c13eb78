"""Render the launch configs for one configuration: a pure function from validated specs to file contents.

>>> files = render_files(model, hw, training, strategy, gradient_accumulation_steps=1)
>>> sorted(files)   # accelerate_config.yaml, ds_config.json, launch_*.sh, README.md, dsadvise.json, ...

Values a user typed reach the files only through the escaping filters below (``tojson``, ``yaml``,
``shquote``, ``md``); see ``templates/README.md``.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from typing import Any

from ..datafiles import bundled_dir
from ..catalog.models import ResolvedModel
from ..formatting import fmt_bytes, fmt_count
from ..specs import HardwareSpec, StrategySpec, TrainingSpec
from .context import build_context
from .proxy import proxy_hf_config

MANIFEST = "dsadvise.json"
EXECUTABLE = ("launch_accelerate.sh", "launch_deepspeed.sh", "launch_torchrun.sh", "slurm.sbatch")


# ---------------------------------------------------------------- escaping filters

def to_json(value: Any) -> str:
    """A JSON value (``json.dumps``; ASCII only, so any string is one safe token)."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def to_yaml(value: Any) -> str:
    """One YAML scalar on one line that ``yaml.safe_load`` reads back as ``value`` exactly."""
    import yaml

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return to_json(value)
    if not isinstance(value, str):
        raise TypeError(f"yaml filter: unsupported {type(value).__name__}")
    text = yaml.safe_dump(value, width=float("inf"), allow_unicode=False)
    text = text[:-len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")
    if "\n" in text or yaml.safe_load(f"k: {text}") != {"k": value}:
        text = yaml.safe_dump(value, width=float("inf"), allow_unicode=False, default_style='"').rstrip("\n")
    return text


def sh_quote(value: Any) -> str:
    """One shell word (``shlex.quote``)."""
    if isinstance(value, bool) or value is None:
        raise TypeError("shquote: expected a string or a number")
    return shlex.quote(str(value))


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def md(value: Any) -> str:
    """Text for one Markdown table cell or line: no line breaks, pipes or HTML. ``<`` and ``>`` are
    backslash-escaped (CommonMark escapes ASCII punctuation), which reads as itself in the plain file too,
    unlike an HTML entity."""
    text = _CONTROL.sub(" ", str(value))
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")


def show(value: Any) -> str:
    """A setting's value for the README: JSON spelling for booleans and null, the rest as text."""
    if value is None or isinstance(value, bool):
        return to_json(value)
    return str(value)


def md_code(value: Any) -> str:
    """Inline code that no backtick in ``value`` can close early."""
    # a code span is literal (no HTML, no escapes): only line breaks go, and pipes for GFM table cells; a value
    # with angle brackets is written as escaped text instead, so that not even the raw file holds a tag
    if "<" in str(value) or ">" in str(value):
        return md(value)
    text = _CONTROL.sub(" ", str(value)).replace("|", "\\|")
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment over ``templates/``: strict undefined, no autoescape, escaping filters."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(bundled_dir("templates"))),
                             undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                             trim_blocks=False, lstrip_blocks=False)
    env.filters.update(tojson=to_json, yaml=to_yaml, shquote=sh_quote, md=md, mdcode=md_code, show=show,
                       count=fmt_count)
    return env


# ---------------------------------------------------------------- files

FILE_DESCRIPTIONS = {
    "accelerate_config.yaml": "accelerate's config (`accelerate launch --config_file`)",
    "ds_config.json": "DeepSpeed's config; accelerate_config.yaml points to it",
    "launch_accelerate.sh": "accelerate launch with this config",
    "launch_deepspeed.sh": "DeepSpeed's launcher (`deepspeed`){}",
    "launch_torchrun.sh": "torchrun, with the environment accelerate launch would set",
    "hostfile": "DeepSpeed hostfile: replace the node names",
    "slurm.sbatch": "SLURM batch script: one accelerate launch per node",
    "README.md": "this file",
    MANIFEST: "the specs these files were rendered from; `dsadvise dry-run` reads its proxy model here",
}

# generate --task infer (advisor/render/infer_render.py): its scripts are executable, and --force removes them
# like the other files dsadvise writes when a folder is re-rendered for training (and the reverse).
from .infer_files import DESCRIPTIONS as _INFER_DESCRIPTIONS, EXECUTABLE as _INFER_EXECUTABLE  # noqa: E402

EXECUTABLE = EXECUTABLE + _INFER_EXECUTABLE
FILE_DESCRIPTIONS.update({k: v for k, v in _INFER_DESCRIPTIONS.items() if k not in FILE_DESCRIPTIONS})


def file_names(ctx: dict) -> list[str]:
    """The files a configuration needs, in the order they are listed."""
    names = ["accelerate_config.yaml"]
    if ctx["ds"] is not None:
        names.append("ds_config.json")
    names.append("launch_accelerate.sh")
    if ctx["ds"] is not None:
        names.append("launch_deepspeed.sh")
    names.append("launch_torchrun.sh")
    if ctx["multinode"]:
        if ctx["ds"] is not None:
            names.append("hostfile")
        names.append("slurm.sbatch")
    names += ["README.md", MANIFEST]
    return names


def manifest(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
             ctx: dict) -> str:
    """``dsadvise.json``: the specs, and the proxy model config for the dry-run."""
    data = {
        "dsadvise_version": ctx["version"],
        "model": {"name": model.name, "source": model.source,
                  "architecture": model.architecture.model_dump(mode="json")},
        "hardware": hw.model_dump(mode="json"),
        "training": training.model_dump(mode="json"),
        "strategy": strategy.model_dump(mode="json") | {"name": strategy.name},
        "gradient_accumulation_steps": ctx["gradient_accumulation_steps"],
        "hf_trainer": ctx["hf_trainer"],
        "distributed_type": ctx["distributed_type"],
        "proxy_model": proxy_hf_config(model.architecture),
    }
    return json.dumps(data, indent=2, ensure_ascii=True) + "\n"


def _readme_extras(ctx: dict) -> dict:
    est = ctx["estimate"]
    g = est.per_gpu
    rows = [("parameters", g.parameters), ("gradients", g.gradients), ("optimizer states", g.optimizer_states),
            ("activations", g.activations), ("temporaries", g.temporaries), ("buffers", g.buffers),
            ("overhead", g.overhead)]
    estimate_rows = [(k, fmt_bytes(v)) for k, v in rows] + [("**total**", f"**{fmt_bytes(g.total)}**")]
    vram = est.hardware.vram_bytes
    if est.fits:
        verdict = (f"Fits: {fmt_bytes(g.total)} of {fmt_bytes(vram)} per GPU "
                   f"({fmt_bytes(est.headroom_bytes)} headroom).")
    else:
        why = [f"needs {fmt_bytes(g.total)} of {fmt_bytes(vram)} per GPU"] if g.total > vram else []
        if not est.per_node_cpu.fits:
            why.append(f"needs {fmt_bytes(est.per_node_cpu.total)} CPU RAM per node")
        verdict = "**DOES NOT FIT** by the estimate: " + ("; ".join(why) or "see dsadvise estimate") + "."
    rec = ctx["recommendation"]
    advice = list(getattr(rec, "advice", []) or []) if rec is not None else []
    names = file_names(ctx)
    files = []
    for n in names:
        what = FILE_DESCRIPTIONS[n]
        if n == "launch_deepspeed.sh":
            what = what.format(", hostfile over ssh" if ctx["multinode"] else "")
        files.append((n, what))
    return {"estimate_rows": estimate_rows, "verdict": verdict, "files": files, "advice": advice,
            "cpu_total": fmt_bytes(est.per_node_cpu.total),
            "cpu_available": fmt_bytes(est.per_node_cpu.available_bytes) if est.per_node_cpu.available_bytes else None}


def render_context(ctx: dict, model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec,
                   strategy: StrategySpec) -> dict[str, str]:
    """Render every file a context needs."""
    env = environment()
    out: dict[str, str] = {}
    full = dict(ctx)
    full.update(_readme_extras(ctx))
    for name in file_names(ctx):
        if name == MANIFEST:
            out[name] = manifest(model, hw, training, strategy, ctx)
        else:
            text = env.get_template(f"{name}.j2").render(**full)
            out[name] = text if text.endswith("\n") else text + "\n"
    return out


def render_files(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec, *,
                 gradient_accumulation_steps: int, hf_trainer: bool = False, loss_scaling: Any = None,
                 main_process_ip: str = "127.0.0.1", main_process_port: int = 29500,
                 estimate=None, recommendation=None) -> dict[str, str]:
    """File name → contents for the launch configs of one configuration (nothing is written).

    ``loss_scaling`` (fp16 only): None/'dynamic' for DeepSpeed's dynamic loss scaling, a number for a static
    scale, or a mapping of fp16 keys (``initial_scale_power``, ``loss_scale_window``, ``hysteresis``,
    ``min_loss_scale``, ``loss_scale``). ``recommendation``: a :class:`advisor.recommend.Recommendation`
    whose reasons and advice go into README.md. Raises InputError for combinations no engine runs.
    """
    ctx = build_context(model, hw, training, strategy, gradient_accumulation_steps=gradient_accumulation_steps,
                        hf_trainer=hf_trainer, loss_scaling=loss_scaling, main_process_ip=main_process_ip,
                        main_process_port=main_process_port, estimate=estimate, recommendation=recommendation)
    return render_context(ctx, model, hw, training, strategy)
