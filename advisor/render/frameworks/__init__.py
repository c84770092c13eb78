"""The config files of the training frameworks people launch with (``dsadvise generate --framework``):
LLaMA-Factory, the HF Trainer, TRL and axolotl, one module each, written next to the accelerate YAML and
DeepSpeed JSON and carrying every setting the memory estimate relies on in the framework's own keys.

>>> files = render_framework(model, hw, training, strategy, "llamafactory", gradient_accumulation_steps=4)
>>> sorted(files)    # ['launch_llamafactory.sh', 'llamafactory_train.yaml']

Nothing heavy is imported here: jinja2 and yaml load on first render.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ...choices import Framework
from ...catalog.models import ResolvedModel
from ...specs import HardwareSpec, StrategySpec, TrainingSpec

FRAMEWORKS: tuple[str, ...] = Framework.__args__  # type: ignore[attr-defined]
EXECUTABLE = ("launch_llamafactory.sh", "launch_hf_trainer.sh", "launch_trl.sh", "launch_axolotl.sh")


def _comment(value: Any) -> str:
    """One comment line: no line breaks."""
    return " ".join(str(value).split())


def _yamlvalue(value: Any) -> str:
    """`` value`` after a key: a scalar on the same line, a list or mapping as an indented block."""
    import yaml

    from ..render import to_yaml

    if isinstance(value, (dict, list, tuple)) and value:
        text = yaml.safe_dump(value if not isinstance(value, tuple) else list(value), default_flow_style=False,
                              sort_keys=False, allow_unicode=False, width=float("inf"))
        return "\n" + "\n".join("  " + line for line in text.rstrip("\n").split("\n"))
    if isinstance(value, (dict, list, tuple)):
        return " {}" if isinstance(value, dict) else " []"
    if isinstance(value, float):   # YAML 1.1 (PyYAML) reads 1e-05 as a string: its own spelling is 1.0e-05
        return " " + yaml.safe_dump(value).split("\n")[0]
    return " " + to_yaml(value)


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment over ``templates/frameworks`` with the escaping filters of render.py."""
    import jinja2

    from ...datafiles import bundled_dir
    from ..render import sh_quote, to_json

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(bundled_dir("templates") / "frameworks")),
                             undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(comment=_comment, yamlvalue=_yamlvalue, shquote=sh_quote, tojson=to_json)
    return env


def render_yaml(header: list[str], sections: list[tuple[str, list[tuple[str, Any, str]]]]) -> str:
    """A commented YAML file: header lines, then sections of (key, value, why)."""
    text = environment().get_template("config.yaml.j2").render(header=header, sections=sections)
    return text.rstrip("\n") + "\n"


def render_launch(header: list[str], env: list[tuple[str, str, str]], command: list[str], *,
                  multinode: bool = False, nodes: int = 1) -> str:
    """A bash launch script: header comments, exported environment (name, value, why), then ``exec command``."""
    text = environment().get_template("launch.sh.j2").render(header=header, env=env, command=command,
                                                             multinode=multinode, nodes=nodes)
    return text.rstrip("\n") + "\n"


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
