"""``dsadvise check`` for tensor / sequence / context parallel layouts and FSDP2 (issue 15): the cross-constraints
of a user's accelerate ``parallelism_config`` block, FSDP2 keys and DeepSpeed ``tensor_parallel`` /
``sequence_parallel_size``, each one line naming the key. Sources are the pinned engines:

* accelerate 1.15 ``commands/launch.py`` (``_validate_launch_command`` copies the block's keys onto the launch
  arguments: only ``parallelism_config_*`` names exist there), ``parallelism_config.py``
  (``ParallelismConfig.__post_init__`` and ``_validate_accelerator``), ``accelerator.py`` (``_prepare_deepspeed``
  registers Ulysses only under DeepSpeed and sets train_batch_size from dp_replicate x dp_shard),
  ``utils/dataclasses.py`` (FSDP2 reads no sharding_strategy / prefetch / use_orig_params / sync_module_states).
* DeepSpeed 0.19.8 ``runtime/engine.py`` (AutoTP groups over world / autotp_size; ``self.mpu = groups`` replaces
  a Ulysses mpu; a warning when autotp_size exceeds the KV heads), ``runtime/sequence_parallel/ulysses_sp.py``
  (heads % sp == 0, kv heads and sp divide one another), ``runtime/config.py`` (the batch world).
"""

from __future__ import annotations

import difflib
from typing import Any

from .validate import Finding

PC_PREFIX = "parallelism_config_"
# The launch options accelerate 1.15 has for the block (accelerate/commands/launch.py "ParallelismConfig Arguments").
PC_KEYS = ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "cp_backend", "cp_comm_strategy", "sp_size",
           "sp_backend", "sp_seq_length", "sp_seq_length_is_variable", "sp_attn_implementation")
FSDP2_IGNORED = {
    "fsdp_sharding_strategy": "FSDP2 reads only fsdp_reshard_after_forward (true = FULL_SHARD, false = SHARD_GRAD_OP)",
    "fsdp_backward_prefetch": "FSDP2 prefetches on its own",
    "fsdp_use_orig_params": "FSDP2 always keeps the original parameters",
    "fsdp_sync_module_states": "FSDP2 broadcasts nothing; fsdp_cpu_ram_efficient_loading does the loading",
    "fsdp_forward_prefetch": "FSDP2 has no forward prefetch option (accelerate refuses it when set directly)",
}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _arch(model: str | None):
    if not model:
        return None
    from ..catalog.models import resolve_model

    return resolve_model(model).architecture


def pc_sizes(block: dict) -> dict[str, Any]:
    """The block's values by ParallelismConfig field name, with accelerate's defaults (1, torch, deepspeed)."""
    out: dict[str, Any] = {"dp_replicate_size": 1, "dp_shard_size": 1, "tp_size": 1, "cp_size": 1, "sp_size": 1,
                           "cp_backend": "torch", "sp_backend": "deepspeed"}
    for key, value in block.items():
        if isinstance(key, str) and key.startswith(PC_PREFIX) and key[len(PC_PREFIX):] in PC_KEYS:
            out[key[len(PC_PREFIX):]] = value
    return out


def _heads(add, arch, tp: int, sp: int, tp_key: str, sp_key: str) -> None:
    if arch is None:
        return
    h, kv = arch.num_attention_heads, arch.num_key_value_heads
    if tp > 1 and (h % tp or kv % tp):
        add("error", tp_key, f"{tp} does not divide the model's {h} attention heads and {kv} key-value heads: each "
            "tensor-parallel rank must hold whole heads")
        return
    if sp > 1:
        hl, kvl = h // max(tp, 1), kv // max(tp, 1)
        if hl % sp:
            add("error", sp_key, f"{sp} does not divide the model's {hl} attention heads: DeepSpeed's "
                "UlyssesSPAttentionHF refuses it ('Attention head count ... is not divisible by SP size')")
        elif kvl % sp and sp % kvl:
            add("error", sp_key, f"{sp} and the model's {kvl} key-value heads do not divide one another: "
                "UlyssesSPAttentionHF refuses it")


def lint_parallelism_yaml(data: dict, file: str, model: str | None, ds_data: dict | None,
                          ds_name: str = "ds_config.json") -> list[Finding]:
    """Findings for the ``parallelism_config`` block and the FSDP2 keys of an accelerate YAML."""
    out: list[Finding] = []

    def add(severity: str, setting: str, message: str) -> None:
        out.append(Finding(severity, file, setting, message))

    dtype = data.get("distributed_type")
    nproc = _int(data.get("num_processes"))
    fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
    fsdp2 = dtype == "FSDP" and str(fc.get("fsdp_version", 1)) == "2"
    if fsdp2:
        for key, why in FSDP2_IGNORED.items():
            if key in fc and not (key == "fsdp_forward_prefetch" and fc[key] is False):
                add("warning", f"fsdp_config.{key}", f"ignored with fsdp_version 2: {why}"
                    + ("; it does not make this SHARD_GRAD_OP" if key == "fsdp_sharding_strategy"
                       and str(fc[key]).upper() == "SHARD_GRAD_OP" and fc.get("fsdp_reshard_after_forward")
                       in (None, True, "true") else ""))
        raf = fc.get("fsdp_reshard_after_forward")
        if isinstance(raf, str) and raf.lower() not in ("true", "false", "yes", "no", "1", "0", "y", "n", "on",
                                                        "off", "t", "f"):
            add("error", "fsdp_config.fsdp_reshard_after_forward", f"{raf!r}: FSDP2 takes true (like FULL_SHARD) or "
                "false (like SHARD_GRAD_OP); accelerate refuses a sharding-strategy name there")
    block = data.get("parallelism_config")
    if not isinstance(block, dict) or not block:
        return out
    for key in block:
        short = str(key)[len(PC_PREFIX):] if str(key).startswith(PC_PREFIX) else None
        if short not in PC_KEYS:
            guess = PC_PREFIX + str(key) if str(key) in PC_KEYS else None
            close = guess or (difflib.get_close_matches(str(key), [PC_PREFIX + k for k in PC_KEYS], n=1, cutoff=0.75)
                              or [None])[0]
            add("warning", f"parallelism_config.{key}", "ignored: accelerate launch reads only the "
                f"parallelism_config_* keys of this block" + (f" (did you mean {close!r}?)" if close else ""))
    s = pc_sizes(block)
    sizes = {k: _int(s[k]) for k in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size")}
    for k, v in sizes.items():
        if v is None or v < 1:
            add("error", f"parallelism_config.{PC_PREFIX}{k}", f"{s[k]!r}: accelerate needs a whole number >= 1")
            return out
    rep, shard, tp, cp, sp = (sizes[k] for k in ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size",
                                                  "sp_size"))
    key = lambda k: f"parallelism_config.{PC_PREFIX}{k}"  # noqa: E731
    total = rep * shard * tp * cp * sp
    if sp > 1 and s["sp_backend"] != "deepspeed":
        add("error", key("sp_backend"), f"{s['sp_backend']!r}: accelerate's only sequence-parallel backend is "
            "'deepspeed' (ALST/Ulysses)")
    if cp > 1 and sp > 1:
        add("error", key("cp_size"), f"{cp} with sp_size {sp}: accelerate refuses both (context and sequence "
            "parallelism are mutually exclusive)")
    if (tp > 1 or cp > 1) and rep > 1 and shard == 1:
        add("error", key("dp_shard_size"), "1 with dp_replicate_size > 1 and tp/cp: accelerate refuses DDP + TP/CP "
            "(make dp_shard_size > 1: HSDP + TP/CP)")
    ds_sp = dtype == "DEEPSPEED" and sp > 1
    if sp > 1 and dtype != "DEEPSPEED":
        add("error", key("sp_size"), f"{sp} under distributed_type {dtype}: accelerate registers Ulysses only when it "
            "prepares a DeepSpeed engine (distributed_type DEEPSPEED)")
    if cp > 1 and not fsdp2:
        add("error", key("cp_size"), f"{cp} needs distributed_type FSDP with fsdp_config.fsdp_version 2 (accelerate "
            "runs context parallelism under FSDP2 only)")
    if dtype == "FSDP" and not fsdp2 and total > 1:
        add("error", "fsdp_config.fsdp_version", "1 with a parallelism_config: accelerate's ParallelismConfig "
            "composes only with FSDP2 (set fsdp_version: 2)")
    if fsdp2 and shard == 1 and cp == 1 and total > 1:
        add("error", key("dp_shard_size"), "1 and cp_size 1: FSDP2 has no dimension to shard across (accelerate "
            "refuses it); leave ranks for dp_shard")
    if dtype == "DEEPSPEED" and tp > 1:
        add("error", key("tp_size"), f"{tp} under DeepSpeed: accelerate would apply its own DTensor TP before the "
            f"engine; DeepSpeed's tensor parallelism is 'tensor_parallel': {{'autotp_size': {tp}}} in {ds_name}")
    if nproc and not ds_sp and total != nproc and total > 1:
        add("error", "parallelism_config", f"dp_replicate {rep} x dp_shard {shard} x tp {tp} x cp {cp} x sp {sp} = "
            f"{total}, but num_processes is {nproc}: accelerate refuses it ('ParallelismConfig total_size does not "
            "match num_processes')")
    if nproc and ds_sp:
        if nproc % sp:
            add("error", key("sp_size"), f"{sp} does not divide num_processes {nproc}: DeepSpeed builds sequence-"
                "parallel groups of sp consecutive ranks")
        elif rep * shard != nproc // sp:
            add("error", key("dp_shard_size"), f"dp_replicate {rep} x dp_shard {shard} = {rep * shard}, but "
                f"num_processes {nproc} / sp {sp} = {nproc // sp} data-parallel ranks: accelerate sets DeepSpeed's "
                "train_batch_size from dp_replicate x dp_shard and DeepSpeed asserts micro x accumulation x "
                f"{nproc // sp} at start-up")
        attn = s.get("sp_attn_implementation")
        if attn in ("eager", "flex_attention"):
            add("error", key("sp_attn_implementation"), f"{attn!r}: accelerate / DeepSpeed Ulysses run over sdpa "
                "or flash attention")
        if isinstance(ds_data, dict):
            dsp = ds_data.get("sequence_parallel_size")
            if dsp is not None and dsp != sp:
                add("error", key("sp_size"), f"{sp}, but {ds_name} says sequence_parallel_size {dsp}")
            if _int((ds_data.get("tensor_parallel") or {}).get("autotp_size") if isinstance(
                    ds_data.get("tensor_parallel"), dict) else None) not in (None, 0, 1):
                add("error", key("sp_size"), f"{sp} with tensor_parallel.autotp_size in {ds_name}: DeepSpeed's AutoTP "
                    "replaces the Ulysses mpu by its own groups (runtime/engine.py); use one of them")
    arch = _safe_arch(model)
    _heads(add, arch, tp, sp, key("tp_size"), key("sp_size"))
    return out


def _safe_arch(model: str | None):
    try:
        return _arch(model)
    except Exception:       # the fit check reports a bad --model; here it only disables the head checks
        return None


def ds_layout_fields(data: dict) -> dict | None:
    """StrategySpec layout fields (tp_size, sp_size) of a DeepSpeed JSON, for the fit estimate; None if plain."""
    tpb = data.get("tensor_parallel") if isinstance(data.get("tensor_parallel"), dict) else {}
    tp, sp = _int(tpb.get("autotp_size")), _int(data.get("sequence_parallel_size"))
    out = {"tp_size": tp} if tp and tp > 1 else {}
    if sp and sp > 1:
        out["sp_size"] = sp
    return out or None


def fsdp_layout_fields(data: dict) -> dict | None:
    """StrategySpec layout fields of an accelerate FSDP YAML (fsdp_version, parallelism_config sizes); None if plain."""
    fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
    if str(fc.get("fsdp_version", 1)) != "2":
        return None
    out: dict[str, Any] = {"fsdp_version": 2}
    block = data.get("parallelism_config")
    if isinstance(block, dict):
        s = pc_sizes(block)
        for key in ("tp_size", "cp_size", "dp_replicate_size"):
            if _int(s[key]) and s[key] > 1:
                out[key] = s[key]
    return out


def ds_layout_world(data: dict, world: int | None) -> int | None:
    """The world DeepSpeed's batch arithmetic uses for this JSON (world / sequence_parallel_size)."""
    from .validate import ds_batch_world

    return ds_batch_world(data, world) if world else world


def lint_parallel_deepspeed(data: dict, file: str, model: str | None, world: int | None,
                            stage: int) -> list[Finding]:
    """Findings for ``tensor_parallel`` and ``sequence_parallel_size`` in a DeepSpeed JSON."""
    out: list[Finding] = []

    def add(severity: str, setting: str, message: str) -> None:
        out.append(Finding(severity, file, setting, message))

    tpb = data.get("tensor_parallel")
    tp = 1
    if isinstance(tpb, dict):
        raw = tpb.get("autotp_size", 0)
        if _int(raw) is None or raw < 0:
            add("error", "tensor_parallel.autotp_size", f"{raw!r}: a whole number (0 or 1 = off)")
        else:
            tp = max(raw, 1)
        if "tp_size" in tpb and "autotp_size" not in tpb:
            add("warning", "tensor_parallel.tp_size", "is DeepSpeed's inference setting; training AutoTP reads "
                "tensor_parallel.autotp_size")
    sp = data.get("sequence_parallel_size", 1)
    if _int(sp) is None or sp < 1:
        add("error", "sequence_parallel_size", f"{sp!r}: a whole number >= 1")
        sp = 1
    if tp > 1 and world and world % tp:
        add("error", "tensor_parallel.autotp_size", f"{tp} does not divide the world size {world}: DeepSpeed builds "
            "tensor-parallel groups of autotp_size consecutive ranks")
    if sp > 1 and world and world % sp:
        add("error", "sequence_parallel_size", f"{sp} does not divide the world size {world}")
    if tp > 1 and sp > 1:
        add("error", "sequence_parallel_size", f"{sp} with tensor_parallel.autotp_size {tp}: DeepSpeed's AutoTP "
            "replaces the Ulysses mpu by its own groups (runtime/engine.py); use one of them")
    if tp > 1 and not _autotp_stage_supported(stage):
        add("error", "tensor_parallel.autotp_size", f"AutoTP training with ZeRO-{stage} is not supported by the "
            "installed DeepSpeed")
    arch = _safe_arch(model)
    if arch is not None and tp > 1 and tp > arch.num_key_value_heads:
        add("warning", "tensor_parallel.autotp_size", f"{tp} exceeds the model's {arch.num_key_value_heads} key-value "
            "heads: ranks beyond them hold no attention shard (DeepSpeed warns; attention does not scale)")
    _heads(add, arch, tp if arch is None or tp <= arch.num_key_value_heads else 1, sp,
           "tensor_parallel.autotp_size", "sequence_parallel_size")
    return out


def _autotp_stage_supported(stage: int) -> bool:
    """Whether the installed DeepSpeed trains AutoTP with this ZeRO stage: 0-2 since AutoTP training came (0.16.4,
    deepspeed.ai/tutorials/autotp-training); releases before 0.19.8 stopped ZeRO-3 with an assertion in
    DeepSpeedEngine._configure_tensor_parallel_states ("the compatibility between autotp and zero_stage = 3",
    github.com/deepspeedai/DeepSpeed/issues/7389), which 0.19.8 no longer has. Read from the engine itself."""
    if stage in (0, 1, 2):
        return True
    import os

    from .validate import _quiet

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import inspect

        with _quiet():
            from deepspeed.runtime.engine import DeepSpeedEngine

        src = inspect.getsource(DeepSpeedEngine._configure_tensor_parallel_states)
    except Exception:
        return True      # cannot tell here: no finding rather than a guess
    return "zero_stage = 3" not in src
