"""The rules the recommender runs: the bundled ``rules/*.yaml`` plus any extra files the user names."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..datafiles import bundled_dir
from ..ruleengine import RuleSet, load_rules
from ..ruleengine.errors import RuleError
from .facts import CATALOG, DOMAINS

# Constants the recommender itself reads (rules/defaults.yaml); a rule set without them is an error.
REQUIRED_CONSTANTS = ("const.margin_fraction", "const.max_micro_batch", "const.time_resolution",
                      "const.fp16.initial_scale_power", "const.fp16.loss_scale_window", "const.fp16.hysteresis",
                      "const.fp16.min_loss_scale")


@lru_cache(maxsize=8)
def _load(extra: tuple[str, ...]) -> RuleSet:
    root = bundled_dir("rules")
    ruleset = load_rules([root, *extra], catalog=CATALOG, domains=DOMAINS, bundled_root=root)
    for name in REQUIRED_CONSTANTS:
        if name not in ruleset.constants:
            raise RuleError(f"the rules define no constant {name!r} (expected in rules/defaults.yaml)")
    return ruleset


def recommend_rules(extra: Sequence[str | Path] = ()) -> RuleSet:
    """Bundled rules plus ``extra`` files or folders; parsed and checked once per process."""
    return _load(tuple(str(p) for p in extra))
