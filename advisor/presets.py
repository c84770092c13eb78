"""Presets: the names LLaMA-Factory-style projects give their example configs (lora, qlora, full, z2-offload, z3,
minimal), mapped onto dsadvise settings (``advisor/data/presets.yaml``), and the table ``dsadvise presets``
prints: each preset estimated on the given hardware through :func:`advisor.api.estimate`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .errors import InputError


def presets() -> dict[str, dict]:
    """Preset name -> its entry in advisor/data/presets.yaml."""
    from .datafiles import load_data

    return load_data("presets.yaml")["presets"]


def preset_strategy(value: str, world: int) -> str:
    """The strategy name a preset's ``strategy`` means for ``world`` GPUs (``data-parallel``: single on one GPU,
    ddp on more; ``zero3-or-single``: single on one GPU, zero3 on more)."""
    if value == "data-parallel":
        return "single" if world == 1 else "ddp"
    if value == "zero3-or-single":
        return "single" if world == 1 else "zero3"
    return value


def preset_settings(name: str, world: int) -> dict[str, str]:
    """The keyword arguments of :func:`advisor.api.estimate` (method, checkpointing, strategy, offload_optimizer,
    loss) that preset ``name`` sets for ``world`` GPUs."""
    table = presets()
    if name not in table:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(table)}", field="--preset")
    p = table[name]
    return {"method": p["method"], "checkpointing": p["checkpointing"],
            "strategy": preset_strategy(p["strategy"], world), "offload_optimizer": p.get("offload_optimizer", "none"),
            "loss": p.get("loss", "plain")}


class PresetRow(NamedTuple):
    """One preset estimated: its settings, per-GPU bytes, whether it fits, and tokens/s of the whole job."""

    preset: str
    what: str
    settings: dict
    backend: str                  # the strategy's CLI name (ddp, zero3, ...)
    per_gpu_bytes: int | None
    vram_bytes: int | None
    fits: bool
    tokens_per_second: float | None
    error: str | None             # a preset that cannot run here (InputError's line), else None
    notes: tuple[str, ...] = ()   # what the estimate assumed (its notes)

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


def preset_table(model: str, **kwargs) -> list[PresetRow]:
    """Every preset estimated with :func:`advisor.api.estimate` on ``model`` and the hardware / training keyword
    arguments given (gpus, nodes, vram, gpu, seq_len, micro_batch, ...; not those a preset sets)."""
    from .api import estimate

    world = kwargs.get("gpus", 1) * kwargs.get("nodes", 1)
    rows = []
    for name, entry in presets().items():
        settings = preset_settings(name, world)
        try:
            est = estimate(model, **{**kwargs, **settings})
        except InputError as exc:
            rows.append(PresetRow(name, entry["what"], settings, settings["strategy"], None, None, False, None,
                                  str(exc)))
            continue
        speed = est.step_time.tokens_per_second if est.step_time is not None else None
        rows.append(PresetRow(name, entry["what"], settings, est.strategy.name, est.per_gpu.total,
                              est.hardware.vram_bytes, est.fits, speed, None, tuple(est.notes)))
    return rows
