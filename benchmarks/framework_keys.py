"""Dump the configuration keys LLaMA-Factory and axolotl accept, from their own argument classes, into
advisor/data/framework_keys.json (what `dsadvise generate --framework` / `check` fall back to where the
framework does not install: CI cannot install either, they pin other transformers / CUDA packages).

Needs both importable (they were installed here with `pip install llamafactory==0.9.5 axolotl==0.19.0 --no-deps`
plus omegaconf, pillow, addict, evaluate, wandb). Run: python benchmarks/framework_keys.py
Prints one line per framework: version, number of keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "advisor" / "data" / "framework_keys.json"


def llamafactory() -> dict:
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    from llamafactory.hparams.parser import _TRAIN_ARGS

    keys = {}
    for cls in _TRAIN_ARGS:
        for f in dataclasses.fields(cls):
            if f.init:
                keys[f.name] = str(f.type)
    return {"source": f"llamafactory {version('llamafactory')} (PyPI; github.com/hiyouga/LLaMA-Factory "
                      "src/llamafactory/hparams/parser.py _TRAIN_ARGS)", "keys": dict(sorted(keys.items()))}


def axolotl() -> dict:
    from axolotl.integrations.cut_cross_entropy.args import CutCrossEntropyArgs
    from axolotl.integrations.liger.args import LigerArgs
    from axolotl.utils.schemas.config import AxolotlInputConfig

    keys = {}
    for cls in (AxolotlInputConfig, LigerArgs, CutCrossEntropyArgs):
        for name, field in cls.model_fields.items():
            keys[field.alias or name] = str(field.annotation)
    return {"source": f"axolotl {version('axolotl')} (PyPI; github.com/axolotl-ai-cloud/axolotl "
                      "src/axolotl/utils/schemas/config.py AxolotlInputConfig + integrations liger, "
                      "cut_cross_entropy args)", "keys": dict(sorted(keys.items()))}


def main() -> None:
    data = {"llamafactory": llamafactory(), "axolotl": axolotl()}
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for name, entry in data.items():
        print(f"{name:13} {entry['source'][:40]:40} {len(entry['keys'])} keys")


if __name__ == "__main__":
    main()
