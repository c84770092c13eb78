"""``dsadvise check`` on framework files: a LLaMA-Factory training YAML, an axolotl YAML, HF Trainer / TRL
argument files (YAML or JSON). Reads the ``deepspeed:`` file they point to and lints the combination: keys the
framework does not know, a DeepSpeed path that does not exist, batch sizes that disagree with a fixed
``train_batch_size``, 4-bit quantization under ZeRO-3/FSDP without a shardable storage dtype, what LLaMA-Factory's
parser refuses (8-bit with ZeRO-3/FSDP, pure_bf16 with ZeRO-3), checkpointing twice under FSDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..validate import ConfigFileError, Finding, parse_text, read_ds_reference

# Keys that only one kind of file has (accelerate YAMLs and DeepSpeed JSONs never carry them).
_LF = ("finetuning_type", "stage", "cutoff_len", "lora_target", "quantization_bit", "template")
_AXOLOTL = ("base_model", "sequence_len", "micro_batch_size", "lora_target_linear", "adapter")
_HF = ("per_device_train_batch_size", "output_dir", "gradient_accumulation_steps")
_TRL = ("max_length", "dataset_name", "use_peft", "lora_r", "load_in_4bit", "packing")


def framework_kind(data: Any) -> str | None:
    """``llamafactory``, ``axolotl``, ``hf-trainer`` or ``trl`` when ``data`` is such a file, else None (accelerate
    YAMLs and DeepSpeed JSONs are left to lint.py)."""
    if not isinstance(data, dict) or "distributed_type" in data or "compute_environment" in data \
            or "zero_optimization" in data or "train_micro_batch_size_per_gpu" in data:
        return None
    if "model_name_or_path" in data and sum(k in data for k in _LF) >= 2:
        return "llamafactory"
    if "base_model" in data and sum(k in data for k in _AXOLOTL) >= 2:
        return "axolotl"
    if sum(k in data for k in _HF) >= 2:
        return "trl" if any(k in data for k in _TRL) else "hf-trainer"
    return None


def _known_keys(kind: str) -> tuple[set[str], str]:
    """(keys, where they come from) for the framework's file."""
    if kind in ("llamafactory", "axolotl"):
        from .validate import documented_keys

        doc = documented_keys(kind)
        return set(doc["keys"]), doc["source"]
    import dataclasses

    from transformers import TrainingArguments

    keys = {f.name for f in dataclasses.fields(TrainingArguments)}
    source = "transformers TrainingArguments"
    if kind == "trl":
        from trl import ModelConfig, ScriptArguments, SFTConfig

        for cls in (SFTConfig, ModelConfig, ScriptArguments):
            keys |= {f.name for f in dataclasses.fields(cls)}
        source = "TRL ScriptArguments + SFTConfig + ModelConfig"
    return keys, source


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def lint_framework(data: dict, path: Path, kind: str, p, lint_deepspeed) -> list[Finding]:
    """Findings for one framework file (``p``: :class:`advisor.render.lint.Problem`; ``lint_deepspeed``: lint.py's
    DeepSpeed linter, for the file the framework points to)."""
    file = path.name
    out: list[Finding] = []

    def add(severity: str, setting: str, message: str) -> None:
        out.append(Finding(severity, file, setting, message))

    name = {"llamafactory": "LLaMA-Factory", "axolotl": "axolotl", "hf-trainer": "the HF Trainer", "trl": "TRL"}[kind]
    try:
        known, source = _known_keys(kind)
    except ImportError as exc:
        known, source = set(), ""
        add("info", "", f"could not check the keys here: {exc}")
    if known:
        import difflib

        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
                if kind == "axolotl":
                    add("warning", key, f"unknown key ({source}): axolotl ignores it"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
                elif close:   # a misspelling: the HfArgumentParser refuses it ('Some keys are not used')
                    add("error", key, f"unknown key ({source}): {name}'s argument parser refuses it (did you mean "
                        f"{close[0]!r}?)")
                else:         # TrainingArguments' keys change between transformers versions (warmup_ratio, ...)
                    add("warning", key, f"not a key of {source}: {name}'s argument parser refuses it unless your "
                        "transformers version's TrainingArguments has it")

    micro_key = "micro_batch_size" if kind == "axolotl" else "per_device_train_batch_size"
    micro = _int(data.get(micro_key, 1 if kind == "axolotl" else 8))   # TrainingArguments' default is 8
    gas = _int(data.get("gradient_accumulation_steps", 1))
    p = run_problem(data, kind, p, path)  # the fit checks use what the file launches (read_keys.py)

    # DeepSpeed file
    ds_ref, ds, stage = data.get("deepspeed"), None, None
    if isinstance(ds_ref, dict):
        ds = ds_ref
    elif isinstance(ds_ref, str) and ds_ref:
        found, ds, problem = read_ds_reference(path, ds_ref, "the framework")
        if problem:
            add("error", "deepspeed", problem)
        if isinstance(ds, dict):
            # the framework runs the HF Trainer, which fills "auto": lint.py's note about plain DeepSpeed is moot
            out += [f for f in lint_deepspeed(ds, found.name, p, world=p.world, world_source="--gpus x --nodes")
                    if not (f.severity == "info" and "'auto'" in f.message)]
    if isinstance(ds, dict):
        zero = ds.get("zero_optimization") if isinstance(ds.get("zero_optimization"), dict) else {}
        stage = zero.get("stage", 0)
        tb, mb, ga = (ds.get(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                          "gradient_accumulation_steps"))
        if _int(mb) is not None and micro is not None and mb != micro:
            add("error", micro_key, f"{micro}, but the DeepSpeed file fixes train_micro_batch_size_per_gpu {mb}: the "
                "HF Trainer stops with a mismatch; write \"auto\" there")
        if _int(ga) is not None and gas is not None and ga != gas:
            add("error", "gradient_accumulation_steps", f"{gas}, but the DeepSpeed file fixes {ga}: write \"auto\" "
                "there")
        if _int(tb) is not None and micro and gas and p.world is not None and tb != micro * gas * p.world:
            add("error", micro_key, f"{micro} x accumulation {gas} x {p.world} GPUs = {micro * gas * p.world}, but "
                f"the DeepSpeed file fixes train_batch_size {tb}: write \"auto\" there")

    fsdp = bool(data.get("fsdp")) or (kind == "axolotl" and bool(data.get("fsdp_config")))
    if ds is None and p.model and (p.vram or p.gpu):
        if ds_ref:      # the run is DeepSpeed's, whose file could not be read: no estimate of another run
            add("info", "", "fit not checked: the DeepSpeed file it names could not be read")
        else:
            out += _fit(file, p)
    sharded = stage == 3 or fsdp
    where = "ZeRO-3" if stage == 3 else "FSDP"
    if kind == "llamafactory":
        bits = data.get("quantization_bit")
        if sharded and bits not in (None, 4):
            add("error", "quantization_bit", f"{bits}-bit with {where}: LLaMA-Factory refuses it ('Only 4-bit "
                "quantized model can use fsdp+qlora', model/model_utils/quantization.py)")
        if data.get("pure_bf16") and stage == 3:
            add("error", "pure_bf16", "LLaMA-Factory refuses pure_bf16 with DeepSpeed ZeRO-3 (hparams/parser.py)")
        if data.get("deepspeed") and fsdp:
            add("error", "deepspeed", "both DeepSpeed and FSDP")
    else:
        q = data.get("quantization_config") if isinstance(data.get("quantization_config"), dict) else {}
        bnb = data.get("bnb_config_kwargs") if isinstance(data.get("bnb_config_kwargs"), dict) else {}
        four_bit = data.get("load_in_4bit") is True or q.get("load_in_4bit") is True
        storage = data.get("bnb_4bit_quant_storage") or q.get("bnb_4bit_quant_storage") or \
            bnb.get("bnb_4bit_quant_storage")
        # axolotl sets bnb_4bit_quant_storage itself for qlora (src/axolotl/loaders/model.py), like LLaMA-Factory
        if four_bit and sharded and not storage and kind != "axolotl":
            add("error", "bnb_4bit_quant_storage",
                f"4-bit weights with {where} need bnb_4bit_quant_storage set to the compute dtype (e.g. bfloat16): "
                "stored as uint8 they are not sharded, each GPU keeps a whole copy (transformers' FSDP-QLoRA / "
                "DeepSpeed ZeRO-3 QLoRA docs)")
        fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
        ac = fc.get("activation_checkpointing", fc.get("fsdp_activation_checkpointing"))
        if fsdp and ac in (True, "true") and data.get("gradient_checkpointing") is True:
            add("error", "gradient_checkpointing", "true together with fsdp_config.activation_checkpointing: the "
                "Trainer refuses both ('can't be set to True simultaneously'); keep the FSDP one")
    if kind == "trl":   # trl/trainer/sft_trainer.py (1.16) SFTTrainer.__init__ rules
        lk = data.get("liger_kernel_config") if isinstance(data.get("liger_kernel_config"), dict) else {}
        if data.get("use_liger_kernel") is True and lk.get("fused_linear_cross_entropy") is True:
            add("error", "liger_kernel_config", "fused_linear_cross_entropy: true: TRL's SFTTrainer refuses it "
                "(ValueError in __init__, TRL >= 1.16: it runs its own tiled fused LM head); drop it")
        targets = data.get("lora_target_modules")
        if data.get("use_peft") is True and (targets == "lm_head" or isinstance(targets, list) and "lm_head" in targets):
            add("error", "lora_target_modules", "lm_head: TRL's SFTTrainer refuses a LoRA adapter on lm_head "
                "(ValueError in __init__, TRL >= 1.16: its fused LM head multiplies by lm_head.weight)")
    return out


def _fit(file: str, p) -> list[Finding]:
    """Without DeepSpeed (whose file lint.py estimates with this file's reading on top): the run this file
    launches, estimated for --model on the given hardware (check_estimate.py); an error with the numbers when
    it does not fit."""
    from ...errors import InputError
    from ..check_estimate import estimate_findings

    try:
        return estimate_findings(file, p, p.reading, p.world or 1)
    except InputError as exc:
        return [Finding("info", file, "", f"fit not checked: {exc}")]


def _side_model_args(path: Path, kind: str) -> dict | None:
    """dsadvise's hf_model_args.yaml beside an HF Trainer file (what the script hands to from_pretrained), or
    None."""
    side = path.parent / "hf_model_args.yaml"
    if kind != "hf-trainer" or not side.is_file():
        return None
    try:
        data = parse_text(side.name, side.read_text(encoding="utf-8"), "yaml")
    except (ConfigFileError, OSError):
        return None
    return data if isinstance(data, dict) else None


def run_problem(data: dict, kind: str, p, path: Path | None = None):
    """``p`` with the estimate inputs the framework file sets (``p.reading``, read_keys.py) and its micro-batch,
    sequence length, checkpointing and method."""
    import dataclasses

    from ..read_keys import read_framework

    reading = read_framework(data, kind, _side_model_args(path, kind) if path else None)
    kw = reading.kwargs
    update: dict[str, Any] = {"reading": reading, "micro_batch": kw.get("micro_batch") or p.micro_batch}
    for field, key in (("seq_len", "seq_len"), ("checkpointing", "checkpointing"), ("method", "method"),
                       ("optimizer", "optimizer")):
        if kw.get(key) is not None:
            update[field] = kw[key]
    return dataclasses.replace(p, **update)


def lint_framework_file(path: Path, text: str, p, lint_deepspeed) -> list[Finding] | None:
    """Findings when ``path`` is a framework file, else None (lint.py goes on with its own kinds)."""
    fmt = "json" if path.suffix == ".json" or text.lstrip().startswith("{") else "yaml"
    try:
        data = parse_text(path.name, text, fmt)
    except ConfigFileError:
        return None
    kind = framework_kind(data)
    return None if kind is None else lint_framework(data, path, kind, p, lint_deepspeed)
