"""Validate framework files with the framework's own parser where it is installed, else against its documented
keys (``advisor/data/framework_keys.json``, dumped from the framework's argument classes by
``benchmarks/framework_keys.py``; each entry names the package version it was taken from).

Parsers, on this machine's CPU:
- hf-trainer: ``HfArgumentParser(TrainingArguments).parse_dict`` (extra keys refused), peft ``LoraConfig`` and
  transformers ``BitsAndBytesConfig`` built from hf_model_args.yaml;
- trl: ``TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_dict``, then TRL's own
  ``get_peft_config`` / ``get_quantization_config`` (what trl/scripts/sft.py calls);
- llamafactory: its ``_parse_train_args`` (HfArgumentParser over its five argument dataclasses) and
  ``_verify_model_args`` (src/llamafactory/hparams/parser.py) when ``llamafactory`` imports;
- axolotl: ``axolotl.utils.config.validate_config`` (the pydantic schema, plugins merged) when it imports.

TrainingArguments refuses bf16/fp16 on a machine without a GPU; the check adds ``use_cpu: true`` to what it
parses (never to the file) and says so. DeepSpeed / FSDP settings are still parsed (the ``deepspeed`` path is
read and its "auto" values filled by transformers' HfTrainerDeepSpeedConfig).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..validate import Finding, Step, StepStatus, parse_text

CONFIG_FILES = {"hf-trainer": ("hf_trainer_args.yaml", "hf_model_args.yaml"), "trl": ("trl_sft.yaml",),
                "llamafactory": ("llamafactory_train.yaml",), "axolotl": ("axolotl.yaml",)}
CPU_NOTE = "use_cpu: true added for the parse only (TrainingArguments refuses bf16/fp16 without a GPU)"


def _finish(step: Step, t0: float) -> Step:
    step.seconds = time.perf_counter() - t0
    if any(f.severity == "error" for f in step.findings) and step.status == StepStatus.PASS:
        step.status = StepStatus.FAIL
    return step


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


@contextlib.contextmanager
def _quiet():
    """Silence the frameworks' import-time and parse-time logging."""
    buf = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    finally:
        logging.disable(previous)


def documented_keys(framework: str) -> dict:
    """{"source": ..., "keys": {key: type text}} for ``framework`` from advisor/data/framework_keys.json."""
    from ...datafiles import load_data

    return load_data("framework_keys.json")[framework]


def keys_findings(framework: str, file: str, data: dict) -> list[Finding]:
    """Keys of ``data`` that the framework does not document (an unknown key is an error: the framework's own
    parser refuses it, or silently ignores it)."""
    doc = documented_keys(framework)
    known = doc["keys"]
    return [Finding("error", file, key, f"not a {framework} key (checked against {doc['source']})")
            for key in data if key not in known]


def _cpu(data: dict) -> dict:
    return {**data, "use_cpu": True} if (data.get("bf16") or data.get("fp16")) else dict(data)


def parse_hf_trainer(folder: Path, args: dict, model: dict | None) -> str:
    """Parse with transformers and peft; returns a detail line, raises on refusal."""
    from transformers import BitsAndBytesConfig, HfArgumentParser, TrainingArguments

    with _pushd(folder):
        (ta,) = HfArgumentParser(TrainingArguments).parse_dict(_cpu(args), allow_extra_keys=False)
    detail = (f"TrainingArguments: per_device_train_batch_size {ta.per_device_train_batch_size}, "
              f"gradient_accumulation_steps {ta.gradient_accumulation_steps}")
    if model:
        if model.get("lora_config"):
            from peft import LoraConfig

            lc = LoraConfig(**model["lora_config"])
            detail += f"; LoraConfig r={lc.r}"
        if model.get("quantization_config"):
            BitsAndBytesConfig(**model["quantization_config"])
            detail += "; BitsAndBytesConfig"
    return detail


def parse_trl(folder: Path, data: dict) -> str:
    """TRL's parser over the three argument classes trl/scripts/sft.py reads, then its PEFT / quantization
    builders."""
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser, get_peft_config, get_quantization_config

    with _pushd(folder):
        script, sft, model = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_dict(
            _cpu(data), allow_extra_keys=False)
    peft = get_peft_config(model)
    q = get_quantization_config(model)
    return (f"SFTConfig: max_length {sft.max_length}, per_device_train_batch_size {sft.per_device_train_batch_size}"
            + (f"; LoraConfig r={peft.r}" if peft is not None else "")
            + ("; BitsAndBytesConfig 4-bit" if q is not None and getattr(q, "load_in_4bit", False) else ""))


def parse_llamafactory(folder: Path, data: dict) -> str:
    """LLaMA-Factory's own argument parsing and model-argument checks."""
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")   # it pins transformers<=5.6: the argument classes still load
    from llamafactory.hparams.parser import _parse_train_args, _verify_model_args

    with _pushd(folder):
        model_args, data_args, training_args, finetuning_args, _ = _parse_train_args(_cpu(data))
    _verify_model_args(model_args, data_args, finetuning_args)
    return (f"llamafactory {_version('llamafactory')}: finetuning_type {finetuning_args.finetuning_type}, "
            f"cutoff_len {data_args.cutoff_len}, per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size}")


def parse_axolotl(folder: Path, data: dict) -> str:
    """axolotl's config validation (pydantic schema, with the plugins' arguments merged)."""
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(dict(data))
    with _pushd(folder):
        if cfg.get("plugins"):
            prepare_plugins(cfg)
        out = validate_config(cfg)
    return f"axolotl {_version('axolotl')}: sequence_len {out.get('sequence_len')}, micro_batch_size " \
           f"{out.get('micro_batch_size')}"


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


@contextlib.contextmanager
def _pushd(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def importable(framework: str) -> str | None:
    """None when the framework's parser imports here, else why not (one line)."""
    module = {"hf-trainer": "transformers", "trl": "trl", "llamafactory": "llamafactory.hparams.parser",
              "axolotl": "axolotl.utils.config"}[framework]
    if framework == "llamafactory":
        os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    try:
        with _quiet():
            __import__(module)
    except Exception as exc:   # ImportError, or a framework failing at import for a missing optional dep
        return f"{module} does not import here ({_first_line(exc)})"
    return None


def validate_framework_files(files: dict[str, str], framework: str) -> list[Step]:
    """One Step: the framework's files parsed by its own parser (or, where it does not install, checked
    against its documented keys)."""
    names = CONFIG_FILES.get(framework)
    if not names:
        return []
    t = time.perf_counter()
    step = Step(f"{framework} parses {', '.join(names)}")
    parsed: dict[str, Any] = {}
    for name in names:
        if name not in files:
            step.findings.append(Finding("error", name, "", "missing"))
            continue
        data = parse_text(name, files[name], "yaml")
        if not isinstance(data, dict):
            step.findings.append(Finding("error", name, "", "not a mapping of keys"))
            continue
        parsed[name] = data
    if step.findings:
        return [_finish(step, t)]
    why_not = importable(framework)
    if why_not is not None:
        for name in names:
            if framework == "hf-trainer" and name == "hf_model_args.yaml":
                continue
            step.findings += keys_findings(framework, name, parsed[name])
        step.detail = f"documented keys only: {why_not}"
        if not step.findings:
            step.status = StepStatus.PASS
        return [_finish(step, t)]
    if framework == "axolotl":   # its schema ignores unknown keys: they are checked against its documented ones
        step.findings += keys_findings(framework, names[0], parsed[names[0]])
    with tempfile.TemporaryDirectory(prefix="dsadvise-framework-") as tmp:
        folder = Path(tmp)
        for name, text in files.items():
            if "/" not in name:
                (folder / name).write_text(text, encoding="utf-8")
        try:
            with _quiet():
                if framework == "hf-trainer":
                    step.detail = parse_hf_trainer(folder, parsed[names[0]], parsed.get(names[1]))
                elif framework == "trl":
                    step.detail = parse_trl(folder, parsed[names[0]])
                elif framework == "llamafactory":
                    step.detail = parse_llamafactory(folder, parsed[names[0]])
                else:
                    step.detail = parse_axolotl(folder, parsed[names[0]])
        except Exception as exc:
            step.findings.append(Finding("error", names[0], "", f"{framework} refuses it: {_first_line(exc)}"))
    if framework != "axolotl" and any(d.get("bf16") or d.get("fp16") for d in parsed.values()):
        step.detail += f" ({CPU_NOTE})"
    return [_finish(step, t)]
