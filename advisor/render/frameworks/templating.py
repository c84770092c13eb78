"""Rendering helpers of the framework files: a commented YAML of sections and a bash launch script, from the
templates under ``templates/frameworks`` with the escaping filters of :mod:`advisor.render.render`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


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
