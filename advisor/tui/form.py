"""What the wizard's fields hold, as plain data, and how their text becomes API arguments.

No Textual here: the widgets fill a :class:`WizardInputs`, :mod:`advisor.tui.backend` turns it into the same
keyword arguments the CLI passes to :func:`advisor.api.estimate` / ``advisor.recommend.recommend``. Field text
is parsed with the CLI's own argument types (the flag table, :mod:`advisor.cli.flags`), so the wizard and
``dsadvise`` accept and reject the same values with the same words.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from ..cli.flags import (ATTENTION, AUTO, CHECKPOINTING, FLAG_WIZARD_FIELDS, LOSSES, METHODS, OPTIMIZERS, PRECISIONS,
                         RECOMMENDED, STRATEGIES, TASKS, WIZARD_FIELD_FLAGS, gib, positive_int)
from ..cli import flags as _flags

METHOD_CHOICES = (*METHODS, AUTO)
PRECISION_CHOICES = (AUTO, *PRECISIONS)
OPTIMIZER_CHOICES = OPTIMIZERS
CHECKPOINTING_CHOICES = (AUTO, *CHECKPOINTING)
STRATEGY_CHOICES = (RECOMMENDED, *STRATEGIES)
# issue 16 (helper I): task switch, method details, framework
TASK_CHOICES = TASKS
ATTENTION_CHOICES = ATTENTION
LOSS_CHOICES = LOSSES
DOUBLE_QUANT_CHOICES = ("yes", "no")
# the frameworks `generate --framework` renders (the flag table's choices once that flag exists)
FRAMEWORK_CHOICES: tuple[str, ...] = getattr(_flags, "FRAMEWORKS", ("accelerate",))

# Field id -> the CLI flag it stands for (errors from the API name the flag; the wizard shows them at the field).
FIELD_FLAGS: dict[str, str] = WIZARD_FIELD_FLAGS
# Flag -> field; the catalogs' errors name the bare field ("model", "gpu").
_FLAG_FIELDS = {**FLAG_WIZARD_FIELDS, "model": "model", "gpu": "gpu"}


def field_for_flag(flag: str | None) -> str | None:
    """The wizard field an API error about ``flag`` belongs to (None: show it in the summary)."""
    return _FLAG_FIELDS.get(flag) if flag else None


@dataclass(frozen=True)
class WizardInputs:
    """Every field of the wizard as the user typed or picked it (text; blank means not given)."""

    model: str = ""
    gpu: str = ""                 # GPU catalog name; blank: give VRAM instead
    vram: str = ""                # GiB per GPU; blank: the GPU's memory
    gpus: str = "1"
    nodes: str = "1"
    cpu_ram: str = ""             # GiB per node; blank: not checked
    seq_len: str = ""             # tokens; blank: the smaller of 2048 and the model's context (as the CLI)
    micro_batch: str = "1"
    global_batch: str = ""
    method: str = "full"
    precision: str = AUTO
    optimizer: str = "adamw"
    checkpointing: str = AUTO
    lora_rank: str = "16"
    strategy: str = RECOMMENDED
    # issue 16 (helper I)
    task: str = "train"           # train | infer
    lora_targets: str = "all-linear"   # comma-separated module names, as --lora-targets
    double_quant: str = "yes"     # QLoRA: bitsandbytes double quantization (--no-double-quant is "no")
    loss: str = "plain"
    attention: str = "sdpa"
    prompt_len: str = ""          # --task infer: prompt tokens of the sequence; blank: all
    framework: str = "accelerate"

    def with_(self, **changes: str) -> WizardInputs:
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    def parse_optional(text: str) -> object:
        return None if not text.strip() else parse(text.strip())
    return parse_optional


# Field id -> parser of its text (the CLI's argparse types); a parser raises ValueError or ArgumentTypeError.
PARSERS: dict[str, Callable[[str], object]] = {
    "vram": _optional(gib), "gpus": positive_int, "nodes": positive_int, "cpu_ram": _optional(gib),
    "seq_len": _optional(positive_int), "micro_batch": positive_int, "global_batch": _optional(positive_int),
    "lora_rank": positive_int, "prompt_len": _optional(positive_int),
    "lora_targets": lambda text: lora_targets(text),
}


def lora_targets(text: str) -> tuple[str, ...]:
    """The LoRA target modules from the field's text, split as the CLI splits --lora-targets."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise ValueError("give module names (q_proj,v_proj,...) or all-linear")
    return targets


def check_field(name: str, text: str) -> str | None:
    """The inline error for one field's text, or None when it parses (the CLI's own argument checks)."""
    parse = PARSERS.get(name)
    if parse is None:
        return None
    try:
        parse(text.strip())
    except (argparse.ArgumentTypeError, ValueError) as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Parsed:
    """Typed values of the numeric fields, plus the inline error of every field that did not parse."""

    values: dict[str, object]
    errors: dict[str, str]


def parse_inputs(inputs: WizardInputs) -> Parsed:
    values: dict[str, object] = {}
    errors: dict[str, str] = {}
    for name, parse in PARSERS.items():
        text = getattr(inputs, name)
        try:
            values[name] = parse(text.strip())
        except (argparse.ArgumentTypeError, ValueError) as exc:
            errors[name] = str(exc)
    return Parsed(values, errors)


def vram_text(gpu_name: str) -> str:
    """The VRAM field's text for a catalog GPU (GiB), as the GPU picker fills it in."""
    from ..catalog.gpus import resolve_gpu
    from ..specs import GiB

    return f"{resolve_gpu(gpu_name).memory_bytes / GiB:g}"
