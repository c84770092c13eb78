"""The config files of the training frameworks people launch with (``dsadvise generate --framework``):
LLaMA-Factory, the HF Trainer, TRL and axolotl, one module each, written next to the accelerate YAML and
DeepSpeed JSON and carrying every setting the memory estimate relies on in the framework's own keys.

>>> files = render_framework(model, hw, training, strategy, "llamafactory", gradient_accumulation_steps=4)
>>> sorted(files)    # ['launch_llamafactory.sh', 'llamafactory_train.yaml']

Nothing heavy is imported here: jinja2 and yaml load on first render.
"""

from __future__ import annotations

from ...choices import Framework
from ...catalog.models import ResolvedModel
from ...specs import HardwareSpec, StrategySpec, TrainingSpec

FRAMEWORKS: tuple[str, ...] = Framework.__args__  # type: ignore[attr-defined]
EXECUTABLE = ("launch_llamafactory.sh", "launch_hf_trainer.sh", "launch_trl.sh", "launch_axolotl.sh")


def render_framework(model: ResolvedModel, hw: HardwareSpec, training: TrainingSpec, strategy: StrategySpec,
                     framework: str, *, gradient_accumulation_steps: int, main_process_ip: str = "127.0.0.1",
                     main_process_port: int = 29500) -> dict[str, str]:
    """File name → text of ``framework``'s own config and launch script for this configuration (nothing is
    written; ``accelerate`` gives {}). They point at ``ds_config.json`` / use ``accelerate_config.yaml`` as
    :func:`advisor.render.render.render_files` writes them. Raises InputError for a setting the framework cannot
    express."""
    from .common import build_run

    if framework not in FRAMEWORKS:
        from ...errors import InputError

        raise InputError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}",
                         field="--framework")
    if framework == "accelerate":
        return {}
    run = build_run(framework, model, hw, training, strategy, gradient_accumulation_steps=gradient_accumulation_steps,
                    main_process_ip=main_process_ip, main_process_port=main_process_port)
    if framework == "llamafactory":
        from .llamafactory import render
    elif framework == "axolotl":
        from .axolotl import render
    elif framework == "trl":
        from .trl import render
    else:
        from .hf_trainer import render
    return render(run)
