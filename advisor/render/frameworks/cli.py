"""The glue ``dsadvise generate`` uses for ``--framework`` and ``--preset`` (kept out of advisor/cli/configs.py
so that its hooks stay two lines)."""

from __future__ import annotations

import argparse

from ...errors import InputError

# flag dest -> the preset key it reads, and the flag's table default (a flag left at its default takes the preset)
_PRESET_FLAGS = {"method": ("--method", "full"), "checkpointing": ("--checkpointing", "none"),
                 "offload_optimizer": ("--offload-optimizer", "none"), "loss": ("--loss", "plain")}


def apply_preset(args: argparse.Namespace) -> None:
    """Fill ``args`` from ``--preset``; a flag given with another value than the preset's is refused."""
    name = getattr(args, "preset", None)
    if not name:
        return
    from ...presets import preset_settings

    world = (args.gpus or 1) * (args.nodes or 1)
    for dest, value in preset_settings(name, world).items():
        current = getattr(args, dest, None)
        if dest == "loss" and value == "fused-linear" and getattr(args, "framework", None) == "trl" \
                and current in (None, "plain"):
            # TRL's SFTTrainer refuses Liger's fused linear cross-entropy (common.build_run): the preset's loss is
            # left out for TRL and the notes say so (framework_files)
            args.trl_preset_note = (f"--preset {name}'s --loss fused-linear left out: TRL's SFTTrainer refuses "
                                    "Liger's fused linear cross-entropy and runs its own fused LM head")
            continue
        flag, default = _PRESET_FLAGS.get(dest, ("--" + dest.replace("_", "-"), None))
        if current not in (None, default) and current != value:
            raise InputError(f"--preset {name} sets {flag} {value}, but {flag} {current} was given: drop one",
                             field=flag)
        setattr(args, dest, value)


def plan_for_framework(plan, args: argparse.Namespace):
    """``plan(args)``, re-planned with full checkpointing when the recommender chose selective checkpointing for
    a framework that has no key for it (said in the assumptions)."""
    framework = getattr(args, "framework", "accelerate")
    planned = plan(args)
    training = planned[2]
    if framework != "accelerate" and args.checkpointing is None and training.activation_checkpointing == "selective":
        args.checkpointing = "full"
        planned = plan(args)
        args.assumed = list(getattr(args, "assumed", [])) + [
            f"checkpointing full: the recommendation's selective checkpointing has no {framework} key"]
    return planned


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
    if framework == "trl":   # the loss TRL runs is none of --loss's: said in the notes (text and JSON)
        from .common import build_run
        from .trl import head_note

        args.assumed = list(getattr(args, "assumed", [])) + ([args.trl_preset_note] if getattr(
            args, "trl_preset_note", None) else []) + [head_note(build_run(
                framework, model, hw, training, strategy, gradient_accumulation_steps=gas))]
    if "README.md" in files:
        launch = next(n for n in extra if n.startswith("launch_"))
        lines = [f"\n## {framework} files\n", "The estimated settings, in the framework's own keys "
                 "(docs/frameworks.md says where each goes):\n"]
        lines += [f"- `{name}`" for name in extra]
        lines.append(f"\nLaunch: `./{launch}`." + (" ds_config.json's batch sizes are \"auto\": the framework's "
                     "Trainer fills them from its own keys." if "ds_config.json" in files else "") + "\n")
        extra = {**extra, "README.md": files["README.md"] + "\n".join(lines)}
    return extra, validate_framework_files({**files, **extra}, framework)
