"""What a user's file says about the run ``dsadvise check`` estimates: each key that changes memory or step time
becomes an :func:`advisor.api.estimate` keyword argument, or is named as not counted (``NotCounted``; ``raises``:
it can need more memory than counted, so the estimate may be low). Which key is which lives in
``advisor/data/check_keys.yaml``; the value mapping is here. Kinds: ``deepspeed`` (JSON), ``accelerate`` (YAML),
``hf-trainer`` / ``trl`` / ``llamafactory`` / ``axolotl`` (their training files).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .frameworks.common import LIGER_FAMILIES

DATA = Path(__file__).resolve().parents[1] / "data" / "check_keys.yaml"

# transformers TrainingArguments.optim (OptimizerNames, transformers 5.24 training_args.py), also LLaMA-Factory's
# and axolotl's ``optim`` / ``optimizer``, as dsadvise optimizers. Paged variants keep their states in unified
# memory that may page out: counted on the GPU (an upper bound). 8-bit Lion counted as Lion (32-bit states).
HF_OPTIMIZERS = {
    **dict.fromkeys(("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused", "adamw_torch_xla",
                     "adamw_torch_npu_fused", "adamw_anyprecision", "paged_adamw_32bit", "paged_adamw",
                     "adamw_bnb_32bit"), "adamw"),
    **dict.fromkeys(("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "ao_adamw_8bit"), "adamw-8bit"),
    "adafactor": "adafactor", "sgd": "sgd",
    **dict.fromkeys(("lion_32bit", "paged_lion_32bit", "lion_8bit", "paged_lion_8bit"), "lion"),
}
# DeepSpeed's optimizer "type" (deepspeed/runtime/config.py: ADAM_OPTIMIZER ... LION_OPTIMIZER), lower-cased.
DS_OPTIMIZERS = {"adam": "adamw", "adamw": "adamw", "fusedadam": "adamw", "cpuadam": "adamw", "lamb": "lamb",
                 "fusedlamb": "lamb", "lion": "lion", "fusedlion": "lion", "cpulion": "lion"}
# LLaMA-Factory flash_attn (extras/constants.py AttentionFunction): auto leaves transformers' default (sdpa).
LF_ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash", "fa3": "flash"}
HF_ATTENTION = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash", "flash_attention_3": "flash",
                "kernels-community/flash-attn": "flash", "kernels-community/vllm-flash-attn3": "flash"}


@dataclass(frozen=True)
class NotCounted:
    """A key of the file no estimate input models."""

    setting: str
    why: str
    raises: bool      # True: it can need more memory than the estimate counts

    def to_json(self) -> dict:
        return {"setting": self.setting, "why": self.why, "raises_memory": self.raises}


@dataclass
class Reading:
    """The estimate inputs one file (and what it points to) sets: ``kwargs`` for :func:`advisor.api.estimate`,
    ``gas`` (gradient accumulation steps), ``liger`` (Liger's fused linear cross-entropy requested: counted where
    the model's family has a Liger patch), what is not counted and what was not reviewed."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    gas: int | None = None
    liger: bool = False
    not_counted: list[NotCounted] = field(default_factory=list)
    unreviewed: list[str] = field(default_factory=list)
    said: list[tuple[str, str]] = field(default_factory=list)   # issue 17 (L): (key, how it was read), shown by check

    def merge(self, other: "Reading | None") -> "Reading":
        """``other`` on top of this one (its settings win)."""
        if other is None:
            return self
        seen = {n.setting for n in other.not_counted}
        return Reading({**self.kwargs, **other.kwargs}, other.gas if other.gas is not None else self.gas,
                       self.liger or other.liger, [n for n in self.not_counted if n.setting not in seen]
                       + other.not_counted, list(dict.fromkeys(self.unreviewed + other.unreviewed)),
                       self.said + other.said)

    def skip(self, setting: str, why: str, raises: bool) -> None:
        self.not_counted.append(NotCounted(setting, why, raises))


@functools.lru_cache(maxsize=1)
def tables() -> dict:
    """advisor/data/check_keys.yaml, with ``inherits`` resolved."""
    import yaml

    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    for kind, entry in data.items():
        base = data.get(entry.get("inherits", ""), {})
        entry["read"] = {**base.get("read", {}), **entry.get("read", {})}
        entry["not_counted"] = {**base.get("not_counted", {}), **entry.get("not_counted", {})}
        entry["no_memory"] = set(base.get("no_memory", [])) | set(entry.get("no_memory", []))
    return data


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _active(value: Any, when: Any) -> bool:
    if when is False or when == "false":
        return value is False or (isinstance(value, str) and value.lower() == "false")
    if when == "set":
        return value is not None
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "none", "no", "null")
    return value not in (None, False, 0, [], {})


def review(kind: str, flat: dict[str, Any], reading: Reading) -> None:
    """Add to ``reading`` the keys of ``flat`` (dotted key -> value) the table names as not counted, and those
    it does not list at all (not reviewed)."""
    t = tables()[kind]
    handled = {n.setting for n in reading.not_counted}
    for key, value in flat.items():
        if key in handled:
            continue
        entry = t["not_counted"].get(key)
        if entry is not None:
            if _active(value, entry.get("when", True)):
                reading.skip(key, entry["why"], bool(entry["raises"]))
            continue
        if key in t["read"] or key in t["no_memory"]:
            continue
        reading.unreviewed.append(key)


def flatten(data: dict, blocks: tuple[str, ...]) -> dict[str, Any]:
    """Top-level keys, with the keys of ``blocks`` (dicts) as ``block.key`` instead of the block."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in blocks and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- DeepSpeed JSON

def _enabled(block: Any) -> Any:
    return block.get("enabled") if isinstance(block, dict) else None


# DeepSpeedZeroConfig fields whose stage3_ name is an alias (deepspeed/runtime/zero/config.py): both spellings
_ZERO_ALIASES = {k: f"stage3_{k}" for k in ("prefetch_bucket_size", "max_live_parameters", "param_persistence_threshold",
                                            "max_reuse_distance", "gather_16bit_weights_on_model_save")}


def read_deepspeed(data: dict, arch=None) -> Reading:
    """Estimate inputs of a DeepSpeed JSON: the ZeRO stage, offload devices, precision, micro-batch and
    accumulation, bucket preset and sub_group_size, DeepSpeed's own optimizer. ``arch``: the model's
    Architecture, to compare the bucket sizes with the presets the estimate knows."""
    r = Reading()
    zero = data.get("zero_optimization") if isinstance(data.get("zero_optimization"), dict) else {}
    zero = {_ZERO_ALIASES.get(k, k): v for k, v in zero.items()}
    data = dict(data, zero_optimization=zero) if "zero_optimization" in data else data
    stage = _int(zero.get("stage", 0))
    stage = stage if stage is not None and 0 <= stage <= 3 else 0
    r.kwargs["strategy"] = f"zero{stage}"
    if stage == 3:   # DeepSpeedZeroConfig gather_16bit_weights_on_model_save defaults to false; accelerate fills
        # "auto" from zero3_save_16bit_model, false unless set (utils/dataclasses.py DeepSpeedPlugin)
        gather = zero.get("stage3_gather_16bit_weights_on_model_save",
                          zero.get("stage3_gather_fp16_weights_on_model_save"))
        r.kwargs["checkpoint_save"] = "consolidated" if gather is True else "sharded"
    for what in ("offload_optimizer", "offload_param"):
        block = zero.get(what)
        dev = block.get("device") if isinstance(block, dict) else None
        if dev in ("cpu", "nvme") and (what == "offload_optimizer" and stage > 0 or stage == 3):
            r.kwargs[what] = dev
            if dev == "nvme":
                r.kwargs["nvme_path"] = block.get("nvme_path") or "(from the config)"
    f16, b16 = _enabled(data.get("fp16")), _enabled(data.get("bf16", data.get("bfloat16")))
    if b16 is True:
        r.kwargs["precision"] = "bf16"
    elif f16 is True:
        r.kwargs["precision"] = "fp16"
    elif "auto" not in (f16, b16):
        r.kwargs["precision"] = "fp32"
    mb, ga = _int(data.get("train_micro_batch_size_per_gpu")), _int(data.get("gradient_accumulation_steps"))
    if mb:
        r.kwargs["micro_batch"] = mb
    if ga:
        r.gas = ga
    sub = zero.get("sub_group_size")
    if isinstance(sub, (int, float)) and not isinstance(sub, bool) and sub >= 1 and stage == 3:
        r.kwargs["sub_group_size"] = int(sub)
    opt = data.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("type"), str):
        name = DS_OPTIMIZERS.get(opt["type"].lower().replace("_", ""))
        if name:
            r.kwargs["optimizer"] = name
        else:
            r.skip("optimizer.type", f"{opt['type']}: no dsadvise optimizer models its states (adamw counted)",
                   opt["type"].lower() not in ("adagrad", "sgd"))
    _buckets(zero, stage, arch, r)
    overlap = zero.get("overlap_comm")
    if isinstance(overlap, bool) and overlap != (stage == 3) and stage in (1, 2, 3):
        r.skip("zero_optimization.overlap_comm", f"{str(overlap).lower()}: the engine's default "
               f"({str(stage == 3).lower()} at stage {stage}) is counted"
               + ("; overlap_comm holds 4.5x the reduce bucket (DeepSpeed docs)" if overlap else ""), overlap)
    off = zero.get("offload_optimizer")
    flat = flatten(data, ("zero_optimization",))
    if isinstance(off, dict) and "ratio" in off:
        flat["zero_optimization.offload_optimizer.ratio"] = off["ratio"] if off["ratio"] != 1 else None
    offp = zero.get("offload_param")
    if isinstance(offp, dict) and "max_in_cpu" in offp:
        flat["zero_optimization.offload_param.max_in_cpu"] = offp["max_in_cpu"]
    flat.pop("zero_optimization.offload_optimizer", None)
    flat.pop("zero_optimization.offload_param", None)
    flat.pop("zero_optimization.stage", None)
    for k in ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
              "zero_optimization.stage3_max_live_parameters", "zero_optimization.stage3_param_persistence_threshold",
              "zero_optimization.sub_group_size", "zero_optimization.allgather_bucket_size",
              "zero_optimization.overlap_comm"):
        flat.pop(k, None)
    for k in ("fp16", "bf16"):
        if isinstance(flat.get(k), dict):
            flat.pop(k)
    review("deepspeed", flat, r)
    return r


_BUCKET_KEYS = {1: ("reduce_bucket_size",), 2: ("reduce_bucket_size",),
                3: ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_max_live_parameters",
                    "stage3_param_persistence_threshold")}
_SIZE_FIELD = {"reduce_bucket_size": "reduce_bucket_size", "stage3_prefetch_bucket_size": "prefetch_bucket_size",
               "stage3_max_live_parameters": "max_live_parameters",
               "stage3_param_persistence_threshold": "param_persistence_threshold"}


def _buckets(zero: dict, stage: int, arch, r: Reading) -> None:
    """--bucket-sizes: the preset (DeepSpeed's defaults, or the HF integration's "auto" values) the file's
    sizes match; each size that matches neither is named (raises when above the preset counted)."""
    keys = _BUCKET_KEYS.get(stage, ("reduce_bucket_size",))
    given = {k: zero.get(k) for k in keys if k in zero}
    if not given or arch is None:
        # no sizes: DeepSpeed's defaults (the HF integration fills only "auto" values); "auto" only: hidden-based
        autos = [k for k, v in given.items() if v == "auto"]
        r.kwargs["bucket_sizes"] = "auto" if autos and len(autos) == len(given) else "default"
        if arch is None and any(v != "auto" for v in given.values()):
            r.kwargs["bucket_sizes"] = "default"
        return
    from ..memory.zero_sizes import deepspeed_sizes
    from ..specs import StrategySpec

    presets = {}
    for preset in ("default", "auto"):
        s = deepspeed_sizes(arch, StrategySpec(backend="deepspeed", zero_stage=max(stage, 0), bucket_sizes=preset))
        presets[preset] = {k: getattr(s, _SIZE_FIELD[k]) for k in keys}
    auto = presets["auto"]

    def value(k: str, v: Any) -> int | None:     # "auto" as the HF integration fills it; a missing key: default
        if v == "auto":
            return auto[k]
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    eff = {k: value(k, zero[k]) if k in zero else presets["default"][k] for k in keys}

    def above(p: str) -> int:
        return sum(1 for k in keys if eff[k] is not None and eff[k] > presets[p][k])

    def off(p: str) -> int:
        return sum(1 for k in keys if eff[k] is not None and eff[k] != presets[p][k])

    best = min(("default", "auto"), key=lambda p: (above(p), off(p), p != "default"))
    r.kwargs["bucket_sizes"] = best
    for k in keys:
        if eff[k] is not None and eff[k] != presets[best][k]:
            r.skip(f"zero_optimization.{k}", f"{eff[k]:,} elements; the estimate counts {presets[best][k]:,} "
                   f"(--bucket-sizes {best})", eff[k] > presets[best][k])


# ---------------------------------------------------------------- accelerate YAML

def read_accelerate(data: dict) -> Reading:
    """Estimate inputs of an accelerate YAML: strategy, precision, FSDP sharding / version / offload /
    activation checkpointing, an inline DeepSpeed block (a deepspeed_config_file is read as its JSON)."""
    r = Reading()
    dtype = data.get("distributed_type")
    mp = data.get("mixed_precision")
    if mp in ("bf16", "fp16"):
        r.kwargs["precision"] = mp
    elif mp in ("no", None) and dtype != "DEEPSPEED":
        r.kwargs["precision"] = "fp32"
    elif mp not in ("no", None):
        r.skip("mixed_precision", f"{mp}: no dsadvise precision models it (bf16 counted)", True)
        r.kwargs["precision"] = "bf16"
    if dtype == "FSDP":
        fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
        version = 2 if str(fc.get("fsdp_version", 1)) == "2" else 1
        if version == 2:
            s = "SHARD_GRAD_OP" if str(fc.get("fsdp_reshard_after_forward")).lower() == "false" else "FULL_SHARD"
        else:
            s = str(fc.get("fsdp_sharding_strategy") or fc.get("fsdp_reshard_after_forward") or "FULL_SHARD").upper()
        name = {"FULL_SHARD": "fsdp-full", "SHARD_GRAD_OP": "fsdp-grad-op", "HYBRID_SHARD": "fsdp-hybrid",
                "NO_SHARD": "fsdp-no-shard", "1": "fsdp-full", "2": "fsdp-grad-op", "3": "fsdp-no-shard",
                "4": "fsdp-hybrid"}.get(s, "fsdp-full")
        r.kwargs["strategy"] = name
        if fc.get("fsdp_offload_params") is True and name in ("fsdp-full", "fsdp-hybrid"):
            r.kwargs["offload_optimizer"] = r.kwargs["offload_param"] = "cpu"
        if fc.get("fsdp_activation_checkpointing") is True:
            r.kwargs["checkpointing"] = "full"
        r.kwargs["checkpoint_save"] = _fsdp_save(fc.get("fsdp_state_dict_type"), version)
        policy = fc.get("fsdp_auto_wrap_policy")
        flat = flatten(data, ("fsdp_config",))
        if policy in (None, "TRANSFORMER_BASED_WRAP"):
            flat.pop("fsdp_config.fsdp_auto_wrap_policy", None)
        for k in ("fsdp_version", "fsdp_sharding_strategy", "fsdp_reshard_after_forward", "fsdp_offload_params",
                  "fsdp_activation_checkpointing", "fsdp_state_dict_type"):
            flat.pop(f"fsdp_config.{k}", None)
        if str(fc.get("fsdp_backward_prefetch", "BACKWARD_PRE")).upper() == "BACKWARD_PRE":
            flat.pop("fsdp_config.fsdp_backward_prefetch", None)
    elif dtype == "DEEPSPEED":
        dc = data.get("deepspeed_config") if isinstance(data.get("deepspeed_config"), dict) else {}
        flat = flatten(data, ("deepspeed_config",))
        if not dc.get("deepspeed_config_file"):
            stage = _int(dc.get("zero_stage", 2))
            stage = stage if stage is not None and 0 <= stage <= 3 else 2
            r.kwargs["strategy"] = f"zero{stage}"
            for what in ("optimizer", "param"):
                dev = dc.get(f"offload_{what}_device")
                if dev in ("cpu", "nvme") and (what == "optimizer" and stage > 0 or stage == 3):
                    r.kwargs[f"offload_{what}"] = dev
                    if dev == "nvme":
                        r.kwargs["nvme_path"] = dc.get(f"offload_{what}_nvme_path") or "(from the config)"
            # accelerate's DeepSpeedPlugin writes no bucket sizes: DeepSpeed's defaults
            r.kwargs["bucket_sizes"] = "default"
            if stage == 3:   # the plugin writes stage3_gather_16bit_weights_on_model_save = zero3_save_16bit_model
                r.kwargs["checkpoint_save"] = "consolidated" if dc.get("zero3_save_16bit_model") is True else "sharded"
            if _int(dc.get("gradient_accumulation_steps")):
                r.gas = dc["gradient_accumulation_steps"]
        for k in ("zero_stage", "offload_optimizer_device", "offload_param_device", "offload_optimizer_nvme_path",
                  "offload_param_nvme_path", "gradient_accumulation_steps", "zero3_save_16bit_model"):
            flat.pop(f"deepspeed_config.{k}", None)
    else:
        flat = dict(data)
        if dtype in ("NO", "MULTI_GPU", None):
            r.kwargs.setdefault("strategy", None)
    for k in ("fsdp_config", "deepspeed_config"):
        flat.pop(k, None)
    review("accelerate", flat, r)
    return r


# ---------------------------------------------------------------- framework files

def _targets(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        if value in ("all", "all-linear"):
            return ("all-linear",)
        return tuple(t.strip() for t in value.split(",") if t.strip()) or None
    if isinstance(value, list) and value:
        return ("all-linear",) if value in (["all-linear"], ["all"]) else tuple(str(t) for t in value)
    return None


def _optim(name: Any, key: str, r: Reading) -> None:
    if not isinstance(name, str):
        return
    opt = HF_OPTIMIZERS.get(name.lower())
    if opt:
        r.kwargs["optimizer"] = opt
        if name.lower() in ("lion_8bit", "paged_lion_8bit"):
            r.skip(key, f"{name}: counted with 32-bit Lion states (an upper bound)", False)
    else:
        r.skip(key, f"{name}: no dsadvise optimizer models its states (adamw counted)", True)


def _fsdp_save(state_dict_type: Any, version: int) -> str:
    """--checkpoint-save of an FSDP state_dict_type; not set: accelerate's default, FULL_STATE_DICT for FSDP1 and
    SHARDED_STATE_DICT for FSDP2 (utils/dataclasses.py ``set_state_dict_type``)."""
    name = str(state_dict_type or ("FULL_STATE_DICT" if version == 1 else "SHARDED_STATE_DICT")).upper()
    return "consolidated" if name in ("FULL_STATE_DICT", "1") else "sharded"


def _hf_fsdp(data: dict, r: Reading) -> bool:
    """TrainingArguments' fsdp / fsdp_config (also axolotl's): strategy, offload, version, checkpointing."""
    raw = data.get("fsdp")
    fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
    words = " ".join(raw).lower() if isinstance(raw, list) else str(raw or "").lower()
    if not words.strip() or raw is False:
        return False
    get = lambda k: fc.get(k, fc.get(f"fsdp_{k}"))      # noqa: E731  (both spellings are accepted)
    version = 2 if str(get("version") or data.get("fsdp_version") or 1) == "2" else 1
    raf = get("reshard_after_forward")
    if version == 2:
        name = "fsdp-grad-op" if raf is False or str(raf).lower() == "false" else "fsdp-full"
    else:
        name = ("fsdp-grad-op" if "shard_grad_op" in words else "fsdp-hybrid" if "hybrid" in words else
                "fsdp-no-shard" if "no_shard" in words else "fsdp-full")
        if isinstance(get("sharding_strategy"), str):
            name = {"FULL_SHARD": "fsdp-full", "SHARD_GRAD_OP": "fsdp-grad-op", "HYBRID_SHARD": "fsdp-hybrid",
                    "NO_SHARD": "fsdp-no-shard"}.get(get("sharding_strategy").upper(), name)
    r.kwargs["strategy"] = name
    if version == 2:
        r.kwargs["fsdp_version"] = 2
    if ("offload" in words or get("offload_params") is True) and name in ("fsdp-full", "fsdp-hybrid"):
        r.kwargs["offload_optimizer"] = r.kwargs["offload_param"] = "cpu"
    if get("activation_checkpointing") is True:
        r.kwargs["checkpointing"] = "full"
    # TrainingArguments passes state_dict_type with its own default, FULL_STATE_DICT (training_args.py)
    r.kwargs["checkpoint_save"] = _fsdp_save(get("state_dict_type") or "FULL_STATE_DICT", version)
    if get("forward_prefetch") is True:
        r.skip("fsdp_config.forward_prefetch", "the next unit is gathered during the forward too: one more layer",
               True)
    bp = get("backward_prefetch")
    if isinstance(bp, str) and bp.lower() not in ("backward_pre",):
        r.skip("fsdp_config.backward_prefetch", f"{bp}: BACKWARD_PRE (two layers gathered) is counted; this holds "
               "less", False)
    if get("limit_all_gathers") is False:
        r.skip("fsdp_config.limit_all_gathers", "false: the CPU may run ahead of the all-gathers", True)
    wrap = get("auto_wrap_policy")
    if isinstance(wrap, str) and wrap.upper() not in ("TRANSFORMER_BASED_WRAP",):
        r.skip("fsdp_config.auto_wrap_policy", f"{wrap}: one unit per decoder layer is counted", True)
    return True


# fsdp_config keys of TrainingArguments / axolotl (either spelling, fsdp_ prefix dropped) that need no memory
# of their own: loading, saving, the layer class (one unit per decoder layer is what is estimated), ...
_FSDP_NO_MEMORY = {"min_num_params", "transformer_layer_cls_to_wrap", "state_dict_type", "sync_module_states",
                   "use_orig_params", "xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt",
                   "xla_fsdp_settings", "version", "offload_params", "activation_checkpointing",
                   "reshard_after_forward", "sharding_strategy", "forward_prefetch", "backward_prefetch",
                   "limit_all_gathers", "auto_wrap_policy", "final_state_dict_type", "offload_policy",
                   "cpu_offload_pin_memory"}


def fsdp_flat(data: dict) -> dict[str, Any]:
    """The file's keys with its fsdp_config's keys not in _FSDP_NO_MEMORY as ``fsdp_config.<key>``."""
    out = {k: v for k, v in data.items() if k != "fsdp_config"}
    fc = data.get("fsdp_config")
    if isinstance(fc, dict):
        for k, v in fc.items():
            name = k[5:] if k.startswith("fsdp_") else k
            if name not in _FSDP_NO_MEMORY:
                out[f"fsdp_config.{name}"] = v
    return out


def _sync_each_batch(data: dict, r: Reading) -> None:
    acc = data.get("accelerator_config") if isinstance(data.get("accelerator_config"), dict) else {}
    kw = acc.get("gradient_accumulation_kwargs") if isinstance(acc.get("gradient_accumulation_kwargs"), dict) else {}
    if kw.get("sync_each_batch") is True:
        r.kwargs["sync_each_batch"] = True


def _liger(data: dict, r: Reading) -> None:
    """HF Trainer use_liger_kernel: Liger's fused linear cross-entropy unless liger_kernel_config turns it off
    (transformers trainer.py passes liger_kernel_config to _apply_liger_kernel_to_instance)."""
    if data.get("use_liger_kernel") is True:
        cfg = data.get("liger_kernel_config") if isinstance(data.get("liger_kernel_config"), dict) else {}
        if cfg.get("fused_linear_cross_entropy", True) is not False:
            r.liger = True


def read_framework(data: dict, kind: str, side: dict | None = None) -> Reading:
    """Estimate inputs of a framework file (``kind``: hf-trainer, trl, llamafactory, axolotl). ``side``: the
    model arguments dsadvise writes beside an HF Trainer file (hf_model_args.yaml's ``model`` keys), if present."""
    return {"hf-trainer": _hf, "trl": _trl, "llamafactory": _llamafactory, "axolotl": _axolotl}[kind](data, side)


def _batch_lengths(r: Reading, key: str, variable: bool, why: str) -> None:
    """issue 17 (L): how the framework pads each batch, as its keys say: ``variable`` -> --batch-lengths variable
    (each batch padded to its own longest sample, the file's length the longest; advisor/memory/batch_lengths.py),
    else every batch the file's length (packed, or padded to it). ``why`` is what check says it read."""
    r.kwargs["batch_lengths"] = "variable" if variable else "fixed"   # the file's keys win over flags / dsadvise.json
    r.said.append((key, why + (": --batch-lengths variable" if variable else "")))


def _training_arguments(data: dict, r: Reading) -> None:
    micro = _int(data.get("per_device_train_batch_size"))
    r.kwargs["micro_batch"] = micro if micro else 8          # TrainingArguments' default is 8
    ga = _int(data.get("gradient_accumulation_steps"))
    r.gas = ga or 1
    _optim(data.get("optim"), "optim", r)
    _liger(data, r)
    _sync_each_batch(data, r)
    if "deepspeed" not in data or not data.get("deepspeed"):
        _hf_fsdp(data, r)


def _checkpointing(data: dict, default: bool) -> bool:
    """TrainingArguments' activation_checkpointing, or its deprecated alias gradient_checkpointing when it is not
    set (transformers 5.24 training_args.py __post_init__); ``default``: the alias's (TRL's _BaseConfig: true)."""
    value = data.get("activation_checkpointing")
    if value is None:
        value = data.get("gradient_checkpointing", default)
    return value is True


def _hf(data: dict, side: dict | None) -> Reading:
    r = Reading()
    _training_arguments(data, r)
    r.kwargs["precision"] = "bf16" if data.get("bf16") is True else "fp16" if data.get("fp16") is True else "fp32"
    ckpt = _checkpointing(data, False)
    r.kwargs.setdefault("checkpointing", "full" if ckpt else "none")
    if ckpt:
        r.kwargs["checkpointing"] = "full"
    flat = dict(data)
    if side:
        _model_args(side, r, full_no_ds=not data.get("deepspeed"))
        flat.update({k: v for k, v in side.items() if k not in ("quantization_config", "lora_config", "dtype",
                                                                   "attn_implementation", "max_seq_length")})
    else:
        r.skip("(model loading)", "from_pretrained's dtype, quantization, LoRA and the tokenizer's length live in "
               "your script: the method comes from --method, the sequence length from --seq-len (or dsadvise.json), "
               "a LoRA base counted in 16 bits; a float32 load (transformers 4 without torch_dtype) needs more "
               "(--base-dtype fp32)", True)
    strategy = data.get("train_sampling_strategy")
    if strategy in ("group_by_length", "batch_rebalance") or data.get("group_by_length") is True:   # issue 17 (L)
        # samplers that group samples of similar length "to minimize padding" (transformers 5.24 training_args.py
        # train_sampling_strategy; transformers 4's group_by_length: "Only useful if applying dynamic padding"):
        # the collator itself lives in the user's script
        key = "train_sampling_strategy" if strategy in ("group_by_length", "batch_rebalance") else "group_by_length"
        _batch_lengths(r, key, True, f"{data.get(key)}: batches grouped by length, which pays only with dynamic "
                       "padding, so each batch is taken as padded to its longest sample, the sequence length the "
                       "longest")
    review("hf-trainer", fsdp_flat(flat), r)
    return r


def _model_args(side: dict, r: Reading, *, full_no_ds: bool) -> None:
    """dsadvise's hf_model_args.yaml: dtype, attn_implementation, max_seq_length, quantization_config,
    lora_config."""
    q = side.get("quantization_config") if isinstance(side.get("quantization_config"), dict) else {}
    lora = side.get("lora_config") if isinstance(side.get("lora_config"), dict) else None
    if _int(side.get("max_seq_length")):
        r.kwargs["seq_len"] = side["max_seq_length"]
    attn = HF_ATTENTION.get(str(side.get("attn_implementation")))
    if attn:
        r.kwargs["attention"] = attn
    if lora is not None:
        r.kwargs["method"] = "qlora" if q.get("load_in_4bit") is True else "lora"
        if _int(lora.get("r")):
            r.kwargs["lora_rank"] = lora["r"]
        if isinstance(lora.get("lora_dropout"), (int, float)):
            r.kwargs["lora_dropout"] = float(lora["lora_dropout"])
        if (t := _targets(lora.get("target_modules"))) is not None:
            r.kwargs["lora_targets"] = t
        if lora.get("modules_to_save"):
            r.skip("lora_config.modules_to_save", "full trainable copies of these modules", True)
        if lora.get("use_dora"):
            r.skip("lora_config.use_dora", "DoRA magnitude vectors and a weight-norm temporary", True)
        if q.get("bnb_4bit_use_double_quant") is False:
            r.kwargs["double_quant"] = False
    elif q.get("load_in_4bit") or q.get("load_in_8bit"):
        r.skip("quantization_config", "a quantized model without lora_config: not modelled", True)
    else:
        r.kwargs["method"] = "full"
    _dtype(side.get("dtype", side.get("torch_dtype")), "dtype", r, full_no_ds=full_no_ds)


def _dtype(dtype: Any, key: str, r: Reading, *, full_no_ds: bool) -> None:
    """from_pretrained's dtype: float32 under a LoRA base -> --base-dtype fp32; bfloat16 for a full fine-tune
    without DeepSpeed (which casts the model itself) -> pure bf16 (no fp32 master weights)."""
    method = r.kwargs.get("method")
    if dtype == "float32" and method in ("lora", "qlora"):
        r.kwargs["base_dtype"] = "fp32"
        if method == "qlora":
            r.skip(key, "float32: also bnb_4bit_compute_dtype (TRL get_quantization_config): the 4-bit linears "
                   "compute in fp32, not modelled", True)
    elif dtype == "bfloat16" and method == "full" and full_no_ds and r.kwargs.get("precision") in ("bf16", "fp32"):
        r.kwargs["precision"] = "pure-bf16"
    elif dtype == "float16" and method == "full" and full_no_ds:
        r.skip(key, "float16 weights for a full fine-tune: the fp16 grad scaler refuses them", False)


def _trl(data: dict, side: dict | None) -> Reading:
    r = Reading()
    _training_arguments(data, r)
    # SFTConfig: bf16 defaults to true unless fp16, gradient_checkpointing to true (trl/trainer/sft_config.py)
    fp16 = data.get("fp16") is True
    bf16 = data.get("bf16", not fp16)
    r.kwargs["precision"] = "bf16" if bf16 is True else "fp16" if fp16 else "fp32"
    if "checkpointing" not in r.kwargs:
        r.kwargs["checkpointing"] = "full" if _checkpointing(data, True) else "none"
    length = data.get("max_length", data.get("max_seq_length", 1024))      # max_seq_length: TRL before 0.20
    r.kwargs["seq_len"] = _int(length) or 1024
    if length is None:
        r.skip("max_length", "null: no truncation, rows as long as the data (estimated at 1024)", True)
    if data.get("packing") is True:   # issue 17 (L): SFTConfig packing / padding_free (defaults false)
        _batch_lengths(r, "packing", False, "true: rows packed up to max_length (every batch counted at max_length)")
    elif data.get("padding_free") is not True:
        _batch_lengths(r, "packing", True, f"{'false' if 'packing' in data else 'not set (SFTConfig default false)'}"
                       ", padding_free not true: each batch padded to its longest sample (TRL's "
                       "DataCollatorForLanguageModeling), max_length the longest")
    if data.get("activation_offloading") is True:
        r.kwargs["offload_activations"] = True
    # ModelConfig (trl/trainer/model_config.py): use_peft, lora_*, load_in_4bit, use_bnb_nested_quant (default
    # false), dtype (default float32)
    if data.get("use_peft") is True:
        r.kwargs["method"] = "qlora" if data.get("load_in_4bit") is True else "lora"
        if _int(data.get("lora_r")):
            r.kwargs["lora_rank"] = data["lora_r"]
        else:
            r.kwargs["lora_rank"] = 16
        if isinstance(data.get("lora_dropout", 0.05), (int, float)):
            r.kwargs["lora_dropout"] = float(data.get("lora_dropout", 0.05))
        t = _targets(data.get("lora_target_modules"))
        if t is not None:
            r.kwargs["lora_targets"] = t
        else:
            r.skip("lora_target_modules", "not given: PEFT's per-model default targets (q_proj, v_proj for "
                   "LLaMA); all-linear counted (an upper bound)", False)
        if r.kwargs["method"] == "qlora" and data.get("use_bnb_nested_quant", False) is not True:
            r.kwargs["double_quant"] = False
    else:
        r.kwargs["method"] = "full"
    attn = HF_ATTENTION.get(str(data.get("attn_implementation")))
    if attn:
        r.kwargs["attention"] = attn
    _dtype(data.get("dtype", data.get("torch_dtype", "float32")), "dtype", r, full_no_ds=not data.get("deepspeed"))
    mik = data.get("model_init_kwargs")
    if isinstance(mik, dict) and ("torch_dtype" in mik or "dtype" in mik) and "dtype" not in data:
        _dtype(mik.get("dtype", mik.get("torch_dtype")), "model_init_kwargs.dtype", r,
               full_no_ds=not data.get("deepspeed"))
    if r.liger:
        r.liger = False
        r.skip("use_liger_kernel", "TRL 1.16 turns Liger's fused linear cross-entropy off (and refuses "
               "liger_kernel_config asking for it): its own fused LM head runs and is counted (--loss trl-head)",
               False)
    # TRL >= 1.16's SFTTrainer computes the loss with its tiled fused LM head (sft_trainer.py add_fused_lm_head,
    # no full logits): counted as such (advisor/families/replay.py trl_head_loss; a traced family counts plain)
    r.kwargs["loss"] = "trl-head"
    review("trl", fsdp_flat(data), r)
    return r


def _llamafactory(data: dict, side: dict | None) -> Reading:
    """LLaMA-Factory 0.9.5 (hparams/*.py; model/model_utils/checkpointing.py, liger_kernel.py, quantization.py)."""
    r = Reading()
    micro = _int(data.get("per_device_train_batch_size"))
    r.kwargs["micro_batch"] = micro if micro else 8
    r.gas = _int(data.get("gradient_accumulation_steps")) or 1
    r.kwargs["seq_len"] = _int(data.get("cutoff_len")) or 2048
    ft = data.get("finetuning_type", "lora")
    bits = data.get("quantization_bit")
    if ft == "lora":
        r.kwargs["method"] = "qlora" if bits == 4 else "lora"
        r.kwargs["lora_rank"] = _int(data.get("lora_rank")) or 8                # finetuning_args.py default 8
        r.kwargs["lora_dropout"] = float(data.get("lora_dropout", 0.0) or 0.0)
        r.kwargs["lora_targets"] = _targets(data.get("lora_target", "all")) or ("all-linear",)
        if bits == 8:
            r.skip("quantization_bit", "8-bit base weights: less than the 16-bit LoRA base counted", False)
        if bits == 4 and data.get("double_quantization", True) is False:
            r.kwargs["double_quant"] = False
    elif ft in ("full", "freeze"):
        r.kwargs["method"] = ft
        if ft == "freeze":
            r.kwargs["freeze_layers"] = _int(data.get("freeze_trainable_layers")) or 2
    else:
        r.skip("finetuning_type", f"{ft}: not modelled", True)
    ckpt = data.get("disable_gradient_checkpointing") is not True
    r.kwargs["checkpointing"] = "full" if ckpt else "none"
    if ckpt and data.get("use_unsloth_gc") is True:
        r.kwargs["offload_activations"] = True
    if data.get("enable_liger_kernel") is True:
        if data.get("stage", "sft") in ("pt", "sft"):
            r.liger = True
        else:
            r.skip("enable_liger_kernel", f"stage {data.get('stage')}: LLaMA-Factory keeps the logits "
                   "(require_logits), Liger's cross-entropy only: the plain loss is counted", False)
    attn = LF_ATTENTION.get(str(data.get("flash_attn", "auto")).lower())
    if attn:
        r.kwargs["attention"] = attn
    r.kwargs["precision"] = ("pure-bf16" if data.get("pure_bf16") is True else "bf16" if data.get("bf16") is True
                             else "fp16" if data.get("fp16") is True else "fp32")
    _optim(data.get("optim", "adamw_torch"), "optim", r)
    # issue 17 (L): DataArguments.packing (None: on in pre-training only), neat_packing sets packing
    # (hparams/data_args.py __post_init__); stage pt concatenates into cutoff_len blocks; otherwise the SFT/pairwise
    # collators pad each batch to its longest sample (pad_to_multiple_of=8 when training, train/sft/workflow.py)
    stage = data.get("stage", "sft")
    if data.get("packing") is True or data.get("neat_packing") is True or stage == "pt":
        key = ("packing" if data.get("packing") is True else "neat_packing" if data.get("neat_packing") is True
               else "stage")
        _batch_lengths(r, key, False, f"{data.get(key)}: rows packed into cutoff_len blocks (every batch counted at "
                       "cutoff_len)")
    else:
        _batch_lengths(r, "packing", True, f"{'false' if 'packing' in data else 'not set'} at stage {stage} (no "
                       "neat_packing): each batch padded to its longest sample (LLaMA-Factory's collator, multiples "
                       "of 8), cutoff_len the longest")
    review("llamafactory", dict(data), r)
    return r


def _axolotl(data: dict, side: dict | None) -> Reading:
    """axolotl 0.19.0 (utils/schemas/config.py, validation.py, utils/config/__init__.py normalize_config)."""
    r = Reading()
    r.kwargs["micro_batch"] = _int(data.get("micro_batch_size")) or 1
    r.gas = _int(data.get("gradient_accumulation_steps")) or 1
    r.kwargs["seq_len"] = _int(data.get("sequence_len")) or 512
    four = data.get("load_in_4bit") is True
    if data.get("adapter") in ("lora", "qlora"):
        r.kwargs["method"] = "qlora" if four or data.get("adapter") == "qlora" else "lora"
        r.kwargs["lora_rank"] = _int(data.get("lora_r")) or 8
        r.kwargs["lora_dropout"] = float(data.get("lora_dropout", 0.0) or 0.0)
        t = _targets(data.get("lora_target_modules"))
        if data.get("lora_target_linear") is True:
            # the union of lora_target_modules and every linear but the output embedding
            # (loaders/adapter.py _build_peft_lora_config, find_all_linear_names)
            extra = [m for m in t or () if m not in ("all-linear", "lm_head")]
            r.kwargs["lora_targets"] = ("all-linear", *(("lm_head",) if "lm_head" in (t or ()) else ()))
            if extra:
                r.skip("lora_target_modules", f"{', '.join(extra)}: adapted too (axolotl takes the union with "
                       "lora_target_linear); counted within all-linear, an embedding's adapter is not counted",
                       any("embed" in m or m == "wte" for m in extra))
        elif t is not None:
            r.kwargs["lora_targets"] = t
        bnb = data.get("bnb_config_kwargs") if isinstance(data.get("bnb_config_kwargs"), dict) else {}
        if r.kwargs["method"] == "qlora" and bnb.get("bnb_4bit_use_double_quant") is False:
            r.kwargs["double_quant"] = False
    elif data.get("adapter"):
        r.skip("adapter", f"{data['adapter']}: not modelled", True)
    else:
        r.kwargs["method"] = "full"
    # issue 17 (L): without sample_packing or pad_to_sequence_len axolotl's collator pads each batch to its longest
    # sample, a multiple of 64 (core/builders/causal.py _prepare_data_collator_kwargs: padding True,
    # pad_to_multiple_of 64; with pad_to_sequence_len, 64 x ceil(sequence_len / 64))
    if data.get("sample_packing") is True or data.get("pad_to_sequence_len") is True:
        key = "sample_packing" if data.get("sample_packing") is True else "pad_to_sequence_len"
        _batch_lengths(r, key, False, "true: every batch counted at sequence_len")
    else:
        _batch_lengths(r, "sample_packing", True, "and pad_to_sequence_len not true: each batch padded to its longest "
                       "sample (axolotl's collator, multiples of 64), sequence_len the longest")
    gc = data.get("gradient_checkpointing")
    r.kwargs["checkpointing"] = "full" if gc in (True, "offload", "offload_disk") else "none"
    off = data.get("activation_offloading")
    if gc in ("offload", "offload_disk") or off in (True, "legacy", "hidden_states"):
        r.kwargs["offload_activations"] = True
    if off == "disk" or gc == "offload_disk":
        r.kwargs["offload_activations"] = True      # on disk: at least what CPU offload keeps off the GPU
    plugins = " ".join(str(p) for p in data.get("plugins") or [])
    if data.get("liger_fused_linear_cross_entropy") is True and "liger" in plugins.lower():
        r.liger = True
    if data.get("cut_cross_entropy") is True and "cut_cross_entropy" in plugins.lower():
        r.kwargs["loss"] = "fused-linear"
    elif data.get("cut_cross_entropy") is True or (data.get("liger_fused_linear_cross_entropy") is True
                                                    and "liger" not in plugins.lower()):
        r.skip("plugins", "the loss kernel's plugin is not listed: axolotl runs the plain loss (counted)", False)
    if data.get("flash_attention") is True:
        r.kwargs["attention"] = "flash"
    elif data.get("eager_attention") is True:
        r.kwargs["attention"] = "eager"
    elif data.get("sdp_attention") is True:
        r.kwargs["attention"] = "sdpa"
    if data.get("bfloat16") is True and r.kwargs["method"] == "full":
        r.kwargs["precision"] = "pure-bf16"
    elif data.get("fp16") is True:
        r.kwargs["precision"] = "fp16"
    elif data.get("bf16", "auto") == "auto":
        pass      # bf16 where the GPU has it, else fp16 (normalize_config): build_training's default
    elif data.get("bf16") is True:
        r.kwargs["precision"] = "bf16"
    else:
        r.kwargs["precision"] = "fp32"
    _optim(data.get("optimizer", "adamw_torch_fused"), "optimizer", r)
    if not data.get("deepspeed"):
        if data.get("fsdp") or isinstance(data.get("fsdp_config"), dict):
            _hf_fsdp(dict(data, fsdp=data.get("fsdp") or "full_shard"), r)
    review("axolotl", fsdp_flat(data), r)
    return r
