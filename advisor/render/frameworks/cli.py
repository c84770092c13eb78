"""The glue ``dsadvise generate`` uses for ``--framework`` and ``--preset`` (kept out of advisor/cli/configs.py
so that its hooks stay two lines)."""

from __future__ import annotations

import argparse

from ...errors import InputError

# flag dest -> the preset key it reads, and the flag's table default (a flag left at its default takes the preset)
_PRESET_FLAGS = {"method": ("--method", "full"), "checkpointing": ("--checkpointing", None),
                 "offload_optimizer": ("--offload-optimizer", "none"), "loss": ("--loss", "plain")}


def presets() -> dict[str, dict]:
    """Preset name -> its settings (advisor/data/presets.yaml)."""
    from ...datafiles import load_data

    return load_data("presets.yaml")["presets"]


def preset_strategy(value: str, world: int) -> str:
    """The strategy name a preset's ``strategy`` means for ``world`` GPUs."""
    if value == "data-parallel":
        return "single" if world == 1 else "ddp"
    if value == "zero3-or-single":
        return "single" if world == 1 else "zero3"
    return value


def preset_settings(name: str, world: int) -> dict:
    """The flag values (by argparse dest) preset ``name`` sets for ``world`` GPUs."""
    table = presets()
    if name not in table:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(table)}", field="--preset")
    p = table[name]
    out = {"method": p["method"], "checkpointing": p["checkpointing"], "strategy": preset_strategy(p["strategy"], world),
           "offload_optimizer": p.get("offload_optimizer", "none"), "loss": p.get("loss", "plain")}
    return out


def apply_preset(args: argparse.Namespace) -> None:
    """Fill ``args`` from ``--preset``; a flag given with another value than the preset's is refused."""
    name = getattr(args, "preset", None)
    if not name:
        return
    world = (args.gpus or 1) * (args.nodes or 1)
    for dest, value in preset_settings(name, world).items():
        current = getattr(args, dest, None)
        flag, default = _PRESET_FLAGS.get(dest, ("--" + dest.replace("_", "-"), None))
        if current not in (None, default) and current != value:
            raise InputError(f"--preset {name} sets {flag} {value}, but {flag} {current} was given: drop one",
                             field=flag)
        setattr(args, dest, value)


def framework_files(framework: str, model, hw, training, strategy, gas: int, files: dict[str, str],
                    args: argparse.Namespace):
    """(framework files, validation steps) for ``generate``: the framework's own config rendered, then parsed
    by the framework's parser where it is installed."""
    if framework == "accelerate":
        return {}, []
    from . import render_framework
    from .validate import validate_framework_files

    extra = render_framework(model, hw, training, strategy, framework, gradient_accumulation_steps=gas,
                             main_process_ip=args.main_process_ip, main_process_port=args.main_process_port)
    return extra, validate_framework_files({**files, **extra}, framework)
