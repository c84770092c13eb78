"""The wizard speaks of its own fields and keys, not of command-line flags.

Messages come from the API, the recommender and the renderer, which name the ``dsadvise`` flags (``pass
--force``, ``give --gpu``). :func:`wizard_words` rewrites them for the wizard: a flag becomes the field that
stands for it (the flag table's wizard field, or the generated Advanced field) with the key of its step, and the
CLI's own commands become what the wizard offers. No Textual here.
"""

from __future__ import annotations

import re

from .form import ADVANCED, SECTIONS, field_for_flag

# wizard field -> (caption on screen, key of its step)
FIELD_CAPTIONS: dict[str, tuple[str, str]] = {
    "model": ("Model", "F1"), "gpu": ("GPU model", "F2"), "vram": ("VRAM per GPU", "F2"),
    "gpus": ("GPUs per node", "F2"), "nodes": ("Nodes", "F2"), "cpu_ram": ("CPU RAM per node", "F2"),
    "task": ("Task", "F3"), "method": ("Method", "F3"), "precision": ("Precision", "F3"),
    "seq_len": ("Sequence length", "F3"), "prompt_len": ("Prompt tokens", "F3"),
    "micro_batch": ("Micro-batch per GPU", "F3"), "global_batch": ("Global batch", "F3"),
    "optimizer": ("Optimizer", "F3"), "checkpointing": ("Activation checkpointing", "F3"),
    "lora_rank": ("LoRA rank", "F3"), "lora_targets": ("LoRA target modules", "F3"),
    "double_quant": ("QLoRA double quantization", "F3"), "loss": ("Loss kernel", "F3"),
    "attention": ("Attention", "F3"), "strategy": ("Strategy", "F3"), "framework": ("Framework", "F5"),
}
# the generated fields: the flag as caption, in its step's Advanced area
_STEP_KEYS = {"hardware": "F2", "training": "F3"}
_SECTION_STEPS = {section.id: section.step for section in SECTIONS}
FIELD_CAPTIONS.update({a.name: (a.flag.flag, f"{_STEP_KEYS[_SECTION_STEPS[a.section]]} Advanced")
                       for a in ADVANCED.values()})

# whole phrases first (the CLI's instructions), then any remaining flag
_PHRASES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"pass --force to overwrite( it)?"), "tick 'Overwrite existing files' (F5) to overwrite"),
    (re.compile(r"--force"), "'Overwrite existing files' (F5)"),
    (re.compile(r",? ?see `dsadvise gpus`"), ", listed in 'GPU model' (F2)"),
    (re.compile(r"`dsadvise recommend`"), "the Recommendation step (F4)"),
    (re.compile(r"(run )?`dsadvise dry-run[^`]*`( on a GPU machine)?"), "run Dry run (Ctrl+R) on a GPU machine"),
    (re.compile(r"`dsadvise models`"), "the catalog list under 'Model' (F1)"),
    (re.compile(r"`dsadvise calibrate`"), "a measured profile (dsadvise calibrate, then dsadvise wizard --profile)"),
)
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")


def field_words(name: str) -> str:
    """``'VRAM per GPU' (F2)`` for a wizard field."""
    caption, key = FIELD_CAPTIONS.get(name, (name, ""))
    return f"'{caption}' ({key})" if key else f"'{caption}'"


def wizard_words(text: str) -> str:
    """``text`` with the CLI's flags and commands said as the wizard's fields and keys."""
    if not text or "-" not in text and "`" not in text:
        return text
    for rx, words in _PHRASES:
        text = rx.sub(words, text)

    def flag(m: re.Match) -> str:
        name = field_for_flag(f"--{m.group(1)}")
        if name is None:
            return f"the command-line option --{m.group(1)}"
        return field_words(name)

    return _FLAG.sub(flag, text)
