"""``dsadvise check``: lint a user's DeepSpeed JSON or accelerate YAML.

Two kinds of findings: what the engines reject (batch arithmetic, fp16 and bf16 together, a bad ZeRO stage,
unknown keys, what accelerate launch refuses), reported with a readable message before the engine's own; and
what they silently accept but is wrong (offload_param below ZeRO-3, bf16 on a GPU without it, a YAML whose
mixed_precision disagrees with its JSON, NVMe offload without a path, buckets that cannot fit in VRAM, a
configuration that does not fit the model on the given hardware — with the estimate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formatting import fmt_bytes
from ..specs import GiB
from .lint_parallel import (ds_layout_fields, ds_layout_world, fsdp_layout_fields, lint_parallel_deepspeed,  # issue 15
                            lint_parallelism_yaml)
from .validate import (DS_IGNORED_WITH_FILE, EngineError, Finding, fill_auto, load_accelerate,
                       load_deepspeed, missing_dependency, parse_text, read_ds_reference, read_text, schema_findings)

BUCKET_WARN_FRACTION = 0.25


@dataclass
class Problem:
    """What the user told us about the run (all optional): the hardware and, for the fit check, the model."""

    gpus: int | None = None
    nodes: int | None = None
    model: str | None = None
    vram: float | None = None        # GiB
    gpu: str | None = None
    cpu_ram: float | None = None     # GiB
    seq_len: int = 2048
    micro_batch: int | None = None
    checkpointing: str = "none"
    optimizer: str = "adamw"
    method: str = "full"
    engines: bool = True
    script: str | None = None        # the training script: does it run its own loop (deepspeed.initialize)?
    reading: Any = None              # read_keys.Reading of a framework file that points to this JSON / YAML
    batch_lengths: str = "fixed"     # issue 17 (L): --batch-lengths (a framework file's padding keys win)

    @property
    def world(self) -> int | None:
        if self.gpus is None and self.nodes is None:
            return None
        return (self.gpus or 1) * (self.nodes or 1)


def _hw(p: Problem):
    """(vram_bytes, GPUInfo | None) from --vram / --gpu; None when neither was given."""
    from ..catalog.gpus import resolve_gpu

    info = resolve_gpu(p.gpu) if p.gpu else None
    if p.vram is not None:
        return int(p.vram * GiB), info
    if info is not None:
        return info.memory_bytes, info
    return None, None


def lint_file(path: str | Path, problem: Problem | None = None) -> list[Finding]:
    """Findings for one DeepSpeed JSON or accelerate YAML. Raises ConfigFileError (exit 2) when the file cannot
    be read or parsed, InputError for bad --model/--gpu."""
    p = problem or Problem()
    path = Path(path)
    text = read_text(path)
    from .frameworks.lint import lint_framework_file   # issue 16 (helper F): LLaMA-Factory/axolotl/HF/TRL files

    if (framework := lint_framework_file(path, text, p, lint_deepspeed)) is not None:
        return no_contradictions(framework)
    kind = _kind(path, text)
    if kind == "deepspeed":
        data = parse_text(path.name, text, "json")
        return no_contradictions(lint_deepspeed(data, path.name, p, world=p.world, world_source="--gpus x --nodes"))
    data = parse_text(path.name, text, "yaml")
    return no_contradictions(lint_accelerate(data, path, p))


def _kind(path: Path, text: str) -> str:
    if path.suffix == ".json":
        return "deepspeed"
    if path.suffix in (".yaml", ".yml"):
        return "accelerate"
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "deepspeed"
    return "accelerate"


# ---------------------------------------------------------------- DeepSpeed JSON

def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _enabled(block: Any) -> Any:
    return block.get("enabled") if isinstance(block, dict) else None


def ds_precision(data: dict) -> str | None:
    """bf16 / fp16 / fp32 as the JSON says; None when it says "auto" (the Trainer decides)."""
    f, b = _enabled(data.get("fp16")), _enabled(data.get("bf16", data.get("bfloat16")))
    if "auto" in (f, b):
        return None
    if b is True:
        return "bf16"
    if f is True:
        return "fp16"
    return "fp32"


def lint_deepspeed(data: dict, file: str, p: Problem, *, world: int | None, world_source: str) -> list[Finding]:
    # The stage gets our own, readable message below.
    out: list[Finding] = [f for f in schema_findings("deepspeed", data, file) if f.setting != "zero_optimization.stage"]
    schema_errors = any(f.severity == "error" for f in out)

    def add(severity: str, setting: str, message: str) -> None:
        out.append(Finding(severity, file, setting, message))

    zero = data.get("zero_optimization") if isinstance(data.get("zero_optimization"), dict) else {}
    stage = zero.get("stage", 0)
    stage_ok = _int(stage) is not None and 0 <= stage <= 3
    if not stage_ok:
        schema_errors = True
        add("error", "zero_optimization.stage", f"{stage!r} is not a ZeRO stage: DeepSpeed accepts 0, 1, 2 or 3")
    stage = stage if stage_ok else 0

    # Precision
    f16, b16 = _enabled(data.get("fp16")), _enabled(data.get("bf16", data.get("bfloat16")))
    precision = ds_precision(data)
    _, gpu_info = _hw(p) if (p.gpu or p.vram) else (None, None)
    if b16 is True and gpu_info is not None and not gpu_info.bf16:
        add("error", "bf16.enabled", f"{gpu_info.name} has no bf16 (needs Ampere/sm80 or newer): DeepSpeed stops "
            "with 'Type bf16 is not supported on your device'; use fp16 with dynamic loss scaling")
    if f16 is True and isinstance(data.get("fp16"), dict):
        ls = data["fp16"].get("loss_scale", 0)
        if isinstance(ls, (int, float)) and ls > 0:
            add("warning", "fp16.loss_scale", f"static loss scale {ls:g}: overflowing steps are not skipped; "
                "0 (dynamic) is the safe default")

    # Batch arithmetic: train_batch_size = micro x accumulation x world (DeepSpeedConfig._batch_assertion)
    tb, mb, ga = (data.get(k) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                        "gradient_accumulation_steps"))
    autos = [k for k, v in (("train_batch_size", tb), ("train_micro_batch_size_per_gpu", mb),
                            ("gradient_accumulation_steps", ga)) if v == "auto"]
    if autos:
        add("info", ", ".join(autos), "'auto' is filled by the HF Trainer or accelerate; plain "
            "deepspeed.initialize refuses it")
    tb, mb, ga = _int(tb), _int(mb), _int(ga)
    batch_error = False
    if tb is None and mb is None and not autos and not schema_errors:
        add("error", "train_batch_size", "give train_batch_size or train_micro_batch_size_per_gpu: DeepSpeed "
            "needs one of them")
        batch_error = True
    implied_world = None
    full_world, world = world, ds_layout_world(data, world)   # issue 15: Ulysses divides it by sequence_parallel_size
    if world != full_world:
        world_source = f"{full_world} from {world_source} / sequence_parallel_size"
    if tb and mb and ga:
        if world is not None and tb != mb * ga * world:
            right = mb * ga * world
            add("error", "train_batch_size", f"{tb} != train_micro_batch_size_per_gpu {mb} x "
                f"gradient_accumulation_steps {ga} x world size {world} ({world_source}) = {right}: DeepSpeed "
                f"asserts this at start-up; set train_batch_size to {right}"
                + (f" or gradient_accumulation_steps to {tb // (mb * world)}"
                   if tb % (mb * world) == 0 and tb // (mb * world) >= 1 else ""))
            batch_error = True
        elif world is None:
            if tb % (mb * ga):
                add("error", "train_batch_size", f"{tb} is not a multiple of train_micro_batch_size_per_gpu {mb} x "
                    f"gradient_accumulation_steps {ga}: no world size satisfies DeepSpeed's "
                    "train_batch_size = micro x accumulation x world")
                batch_error = True
            else:
                implied_world = tb // (mb * ga)
                add("info", "train_batch_size", f"implies a world size of {implied_world} GPUs "
                    "(give --gpus/--nodes to check it)")
    elif world is not None and not autos:
        if tb and mb and (tb % (mb * world) or tb // (mb * world) < 1):
            add("error", "train_batch_size", f"{tb} is not micro-batch {mb} x world size {world} x a whole number "
                "of accumulation steps: DeepSpeed derives gradient_accumulation_steps by floor division and then "
                "fails its batch assertion")
            batch_error = True
        elif tb and ga and (tb % (ga * world) or tb // (ga * world) < 1):
            add("error", "train_batch_size", f"{tb} is not gradient_accumulation_steps {ga} x world size {world} "
                "x a whole micro-batch: DeepSpeed's derived micro-batch would not multiply back")
            batch_error = True
        elif tb and mb is None and ga is None and (tb % world or tb < world):
            add("error", "train_batch_size", f"{tb} is not a multiple of the world size {world}")
            batch_error = True

    world = full_world
    out += _keys_findings(data, zero, stage, file)
    out += lint_parallel_deepspeed(data, file, p.model, world, stage)     # issue 15

    # Offload
    for what in ("offload_optimizer", "offload_param"):
        off = zero.get(what)
        if not isinstance(off, dict):
            continue
        dev = off.get("device", "none")
        setting = f"zero_optimization.{what}"
        if what == "offload_param" and dev not in ("none", None) and stage < 3:
            add("warning", f"{setting}.device", f"{dev} offload of parameters only exists at ZeRO-3; DeepSpeed "
                f"silently ignores it at stage {stage} (parameters stay on the GPU): drop it or use stage 3")
        if what == "offload_optimizer" and dev not in ("none", None) and stage == 0:
            add("warning", f"{setting}.device", "optimizer offload needs ZeRO stage 1-3; stage 0 ignores it")
        if dev == "nvme" and not off.get("nvme_path"):
            add("error", f"{setting}.nvme_path", "NVMe offload without nvme_path: DeepSpeed accepts the config, "
                "then fails when it creates its swap files; set nvme_path to a local NVMe mount")
        if dev not in ("nvme",) and off.get("nvme_path"):
            add("warning", f"{setting}.nvme_path", f"ignored: device is {dev!r}, not 'nvme'")

    # Buckets against VRAM
    vram, _ = _hw(p) if (p.gpu or p.vram) else (None, None)
    if vram:
        elem = 4 if precision == "fp32" else 2
        overlap = zero.get("overlap_comm")
        overlap = (stage == 3) if overlap is None else bool(overlap)
        factor = (4.5 if stage in (1, 2) else 2.0 if stage == 3 else 1.0) if overlap else 1.0
        buckets = [("reduce_bucket_size", factor), ("allgather_bucket_size", factor if stage in (1, 2) else 0),
                   ("stage3_prefetch_bucket_size", 1.0 if stage == 3 else 0),
                   ("stage3_max_live_parameters", 1.0 if stage == 3 else 0)]
        for key, f in buckets:
            n = zero.get(key)
            if not f or isinstance(n, bool) or not isinstance(n, (int, float)):
                continue
            need = int(n * elem * f)
            how = f" x {f:g} (overlap_comm)" if f not in (0, 1.0) else ""
            if need > vram:
                add("error", f"zero_optimization.{key}", f"{int(n):,} elements x {elem} bytes{how} = "
                    f"{fmt_bytes(need)}: more than the GPU's {fmt_bytes(vram)} (buckets are allocated on the GPU)")
            elif need > BUCKET_WARN_FRACTION * vram and key != "stage3_max_live_parameters":
                add("warning", f"zero_optimization.{key}", f"{int(n):,} elements x {elem} bytes{how} = "
                    f"{fmt_bytes(need)}: over a quarter of the GPU's {fmt_bytes(vram)}")

    # Does it fit? (every key that changes memory is read, or named as not counted: read_keys.py)
    eff_world = world or implied_world
    if p.model and vram and stage_ok:
        reading = _ds_reading(data, p)
        dp = ds_layout_world(data, eff_world)        # DeepSpeed derives the accumulation from train_batch_size
        if reading.gas is None and tb and mb and dp and tb % (mb * dp) == 0:
            reading.gas = tb // (mb * dp)
        out += _fit(file, p, reading, eff_world or 1)

    # An HF template without zero_optimization: plain DeepSpeed would run it as stage 0, but it cannot fill
    # "auto", and the HF Trainer / accelerate refuse it (accelerate/utils/dataclasses.py DeepSpeedPlugin:
    # "Please specify the ZeRO optimization config in the DeepSpeed config.")
    if autos and "zero_optimization" not in data:
        add("error", "zero_optimization", "missing in an HF \"auto\" template: the HF Trainer and accelerate refuse "
            "it ('Please specify the ZeRO optimization config in the DeepSpeed config'); add "
            "\"zero_optimization\": {\"stage\": 0} (plain deepspeed, which treats a missing block as stage 0, cannot "
            "fill \"auto\")")

    # A custom loop (deepspeed.initialize in the script, no HF Trainer / Accelerator): nothing fills "auto", so
    # DeepSpeed reads the file as it is.
    own_loop = bool(p.script) and _has_auto(data) and script_loop(p.script) == "deepspeed"
    if own_loop:
        add("error", "", f"\"auto\" values with {Path(p.script).name}, which calls deepspeed.initialize itself: only "
            "the HF Trainer and accelerate fill \"auto\"; plain DeepSpeed reads them as they are (write numbers)")

    # The engine itself: the authority. Its refusal is always reported in its own words; a schema error it
    # accepts is only a warning (the shipped schema is stricter than this DeepSpeed).
    if p.engines:
        cfg = data if own_loop else fill_auto(data, micro_batch=p.micro_batch or 1)[0]
        out += _engine_verdict(lambda: load_deepspeed(cfg, eff_world or 1, file),
                               out, file, "DeepSpeed", skip_batch=batch_error)
    return out


def _has_auto(obj: Any) -> bool:
    if isinstance(obj, dict):
        return any(_has_auto(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_auto(v) for v in obj)
    return obj == "auto"


def script_loop(path: str | Path) -> str:
    """Who runs the training loop of a Python script: "hf" (Trainer, an Accelerator), "deepspeed" (its own loop
    around deepspeed.initialize), or "unknown". Read as text (bounded), never imported."""
    import re

    text = read_text(Path(path))
    if re.search(r"\b(\w*Trainer|Accelerator)\s*\(", text):
        return "hf"
    if re.search(r"\bdeepspeed\.initialize\s*\(", text):
        return "deepspeed"
    return "unknown"


def _engine_verdict(load, out: list[Finding], file: str, engine: str, *, skip_batch: bool = False) -> list[Finding]:
    """Run an engine's own loader; turn its verdict into findings and reconcile the schema's with it (in place)."""
    try:
        load()
    except EngineError as exc:
        if missing_dependency(exc.message):
            return [Finding("info", file, exc.setting, f"could not check this here: {exc.message} (not an error of "
                            "the file: the machine running check lacks it)")]
        if skip_batch and "batch" in exc.message.lower():
            return []
        return [Finding("error", file, exc.setting, exc.message)]
    except ImportError as exc:
        return [Finding("info", file, "", f"could not check this here: {engine} is not installed ({exc})")]
    except Exception as exc:  # the engine crashed: say so, do not fail the file for it
        return [Finding("info", file, "", f"{engine}'s own check crashed ({type(exc).__name__}: {exc}); not a "
                        "verdict on the file")]
    for i, f in enumerate(out):
        if f.severity == "error" and f.schema:
            out[i] = Finding("warning", f.file, f.setting, f"{f.message} (the shipped schema says so; {engine} "
                             "accepts it)", schema=True)
    return []


# Legacy keys DeepSpeed still reads through a deprecation shim (deepspeed/runtime/zero/config.py: the fields with
# "deprecated": True and their "new_param"; runtime/config.py reads "bfloat16" as "bf16").
LEGACY_ZERO = {"cpu_offload": "offload_optimizer: {\"device\": \"cpu\"}",
               "cpu_offload_param": "offload_param: {\"device\": \"cpu\"}",
               "cpu_offload_use_pin_memory": "pin_memory inside offload_param / offload_optimizer",
               "stage3_gather_fp16_weights_on_model_save": "stage3_gather_16bit_weights_on_model_save"}


def _keys_findings(data: dict, zero: dict, stage: int, file: str) -> list[Finding]:
    """Warnings for keys DeepSpeed ignores or only reads through a deprecation shim: unknown top-level keys (with
    the closest known one), keys of another ZeRO stage, legacy keys, overlap_comm with ZeRO-2 + CPU offload."""
    import difflib

    from ..datafiles import load_data

    out: list[Finding] = []
    known = set(load_data("schemas/ds_top_level_keys.yaml"))
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            out.append(Finding("warning", file, key, "unknown top-level key: DeepSpeed ignores it"
                               + (f" (did you mean {close[0]!r}?)" if close else "")))
    if "bfloat16" in data and "bf16" not in data:
        out.append(Finding("warning", file, "bfloat16", "legacy name: DeepSpeed still reads it as \"bf16\"; "
                           "write \"bf16\""))
    for key, new in LEGACY_ZERO.items():
        if key in zero:
            out.append(Finding("warning", file, f"zero_optimization.{key}", f"legacy key: DeepSpeed translates it "
                               f"(deprecated); write {new}"))
    if stage < 3:
        other = [k for k in zero if k.startswith("stage3_") and k not in LEGACY_ZERO]
        if other:
            out.append(Finding("warning", file, "zero_optimization", f"{', '.join(other)}: ZeRO-3 settings, ignored "
                               f"at stage {stage}"))
    off = zero.get("offload_optimizer")
    if stage == 2 and zero.get("overlap_comm") is True and isinstance(off, dict) and off.get("device") == "cpu":
        out.append(Finding("warning", file, "zero_optimization.overlap_comm", "true with ZeRO-2 and CPU optimizer "
                           "offload: on affected DeepSpeed versions the loss goes to NaN or 0 "
                           "(https://github.com/deepspeedai/DeepSpeed/issues/4298, "
                           "https://github.com/haotian-liu/LLaVA/issues/1231); set it to false"))
    return out


def no_contradictions(findings: list[Finding]) -> list[Finding]:
    """Drop a warning about a setting an error of the same run already names (the error decides)."""
    errors = {(f.file, f.setting) for f in findings if f.severity == "error" and f.setting}
    return [f for f in findings if not (f.severity == "warning" and (f.file, f.setting) in errors)]


def _dev(block: Any) -> str:
    if isinstance(block, dict) and block.get("device") in ("cpu", "nvme"):
        return block["device"]
    return "none"


def _ds_reading(data: dict, p: Problem):
    """The estimate inputs of a DeepSpeed JSON on top of those of the file that points to it (a framework
    file's, an accelerate YAML's)."""
    from .read_keys import Reading, read_deepspeed

    arch = None
    try:
        from ..catalog.models import resolve_model

        arch = resolve_model(p.model).architecture if p.model else None
    except InputError:
        pass
    ds = read_deepspeed(data, arch)
    ds.kwargs.update({f: v for f, v in (ds_layout_fields(data) or {}).items()})   # issue 15: AutoTP / Ulysses
    return (p.reading or Reading()).merge(ds)


def _fit(file: str, p: Problem, reading, world: int) -> list[Finding]:
    """Estimate the run the file launches for --model on the hardware (advisor.api.estimate with the inputs its
    keys set, check_estimate.py); an error with the numbers when it does not fit."""
    from .check_estimate import estimate_findings

    try:
        return estimate_findings(file, p, reading, world)
    except InputError as exc:
        return [Finding("info", file, "", f"fit not checked: {exc}")]


# ---------------------------------------------------------------- accelerate YAML

def lint_accelerate(data: dict, path: Path, p: Problem) -> list[Finding]:
    file = path.name
    if data.get("compute_environment") == "AMAZON_SAGEMAKER":
        # accelerate reads these into SageMakerConfig (other keys: ec2_instance_type, iam_role_name, ...) and
        # hands them to the sagemaker SDK; nothing is launched on this machine.
        return [Finding("info", file, "compute_environment", "a SageMaker config: accelerate launch hands it to the "
                        "sagemaker SDK, which starts the job on AWS; dsadvise checks local launches only")]
    out: list[Finding] = schema_findings("accelerate", data, file)
    schema_errors = any(f.severity == "error" for f in out)

    def add(severity: str, setting: str, message: str) -> None:
        out.append(Finding(severity, file, setting, message))

    dtype = data.get("distributed_type")
    nproc, nmach = _int(data.get("num_processes")), _int(data.get("num_machines", 1)) or 1
    mp = data.get("mixed_precision")
    if nproc and nproc > 0 and nproc % nmach:
        add("error", "num_processes", f"{nproc} processes do not divide over num_machines {nmach}: accelerate "
            "starts num_processes / num_machines per machine")
    if p.world is not None and nproc and nproc > 0 and nproc != p.world:
        add("error", "num_processes", f"{nproc}, but --gpus x --nodes is {p.world}: num_processes counts all "
            "processes on all machines")
    if p.nodes is not None and nmach != p.nodes:
        add("error", "num_machines", f"{nmach}, but --nodes is {p.nodes}")
    if dtype == "MULTI_GPU" and nproc is not None and 0 < nproc < 2:
        add("error", "num_processes", "MULTI_GPU needs at least 2 processes (accelerate launch refuses 1); use "
            "distributed_type NO for one GPU")
    _, gpu_info = _hw(p) if (p.gpu or p.vram) else (None, None)
    if mp == "bf16" and gpu_info is not None and not gpu_info.bf16:
        add("error", "mixed_precision", f"bf16 on {gpu_info.name}, which has no bf16 (Ampere/sm80 or newer "
            "needed): use fp16")

    ds_findings: list[Finding] = []
    ds_data = None
    world = nproc if nproc and nproc > 0 else p.world
    dscfg = data.get("deepspeed_config") if isinstance(data.get("deepspeed_config"), dict) else {}
    if dtype == "DEEPSPEED":
        ds_file = dscfg.get("deepspeed_config_file")
        if ds_file:
            ignored = [k for k in DS_IGNORED_WITH_FILE if k in dscfg]
            if ignored:
                add("error", ", ".join(f"deepspeed_config.{k}" for k in ignored),
                    "accelerate launch refuses these next to deepspeed_config_file: set them in the DeepSpeed "
                    "JSON instead")
            found, ds_data, problem = read_ds_reference(path, str(ds_file), "accelerate")
            if problem:
                add("error", "deepspeed_config.deepspeed_config_file", problem)
            if ds_data is not None:
                from .read_keys import Reading, read_accelerate

                p = dataclasses.replace(p, reading=(p.reading or Reading()).merge(read_accelerate(data)))
                ds_findings = lint_deepspeed(ds_data, found.name, p, world=world,
                                             world_source=f"num_processes in {file}")
            if mp is not None:
                json_mp = ds_precision(ds_data) if ds_data is not None else None
                yaml_mp = {"no": "fp32"}.get(mp, mp)
                if ds_data is not None and json_mp is not None and json_mp != yaml_mp:
                    add("error", "mixed_precision", f"{mp} here, but {found.name} says {json_mp}; and accelerate "
                        "launch refuses mixed_precision next to deepspeed_config_file anyway: remove it and keep "
                        f"the precision in {found.name}")
                else:
                    add("error", "mixed_precision", "accelerate launch refuses mixed_precision next to "
                        "deepspeed_config_file ('the following accelerate config variables will be ignored'): "
                        "remove it; the precision lives in the DeepSpeed JSON")
        else:
            stage = dscfg.get("zero_stage", 2)
            if dscfg.get("offload_param_device", "none") != "none" and stage != 3:
                add("warning", "deepspeed_config.offload_param_device", f"parameter offload only exists at "
                    f"ZeRO-3; stage {stage} ignores it")
            for what in ("optimizer", "param"):
                if dscfg.get(f"offload_{what}_device") == "nvme" and not dscfg.get(f"offload_{what}_nvme_path"):
                    add("error", f"deepspeed_config.offload_{what}_nvme_path", "NVMe offload without a path")
    if dtype == "FSDP":
        fc = data.get("fsdp_config") if isinstance(data.get("fsdp_config"), dict) else {}
        version = fc.get("fsdp_version", 1)
        ss, raf = fc.get("fsdp_sharding_strategy"), fc.get("fsdp_reshard_after_forward")
        if version == 1 and ss is None and isinstance(raf, str) and raf.upper() != "FULL_SHARD":
            add("error", "fsdp_config.fsdp_reshard_after_forward", f"{raf} is silently replaced by FULL_SHARD: "
                "accelerate launch passes FSDP_SHARDING_STRATEGY=FULL_SHARD when fsdp_sharding_strategy is absent, "
                f"and FSDP1 prefers it; add fsdp_sharding_strategy: {raf.upper()}")
        if version == 1 and isinstance(ss, str) and isinstance(raf, str) and ss.upper() != raf.upper():
            add("warning", "fsdp_config.fsdp_sharding_strategy", f"{ss} wins over fsdp_reshard_after_forward {raf} "
                "under FSDP1; make them agree")
        if fc.get("fsdp_cpu_ram_efficient_loading") is True and fc.get("fsdp_sync_module_states") is False:
            add("error", "fsdp_config.fsdp_sync_module_states", "must be true with fsdp_cpu_ram_efficient_loading: "
                "accelerate launch refuses it (the other ranks start on the meta device and need rank 0's weights)")
        strategy = (ss or raf or "FULL_SHARD") if version == 1 else ("FULL_SHARD" if raf in (None, True) else
                                                                     "SHARD_GRAD_OP")
        strategy = str(strategy).upper()
        if fc.get("fsdp_offload_params") is True and strategy in ("SHARD_GRAD_OP", "NO_SHARD"):
            add("warning", "fsdp_config.fsdp_offload_params", f"offloading with {strategy}: parameters are not "
                "sharded, so each rank offloads and reloads the whole model every step")
        if p.model and fc.get("fsdp_transformer_layer_cls_to_wrap"):
            from ..catalog.models import resolve_model
            from .context import FSDP_LAYER_CLASSES

            fam = resolve_model(p.model).architecture.family
            want = FSDP_LAYER_CLASSES.get(fam)
            names = [n.strip() for n in str(fc["fsdp_transformer_layer_cls_to_wrap"]).split(",")]
            if want and want not in names:
                add("error", "fsdp_config.fsdp_transformer_layer_cls_to_wrap", f"{', '.join(names)} is not a layer "
                    f"of {fam} models ({want}): accelerate fails with 'Could not find the transformer layer class'")

    out += lint_parallelism_yaml(data, file, p.model, ds_data)      # issue 15: parallelism_config, FSDP2 keys

    # Fit (a deepspeed_config_file is estimated with its JSON, lint_deepspeed)
    vram, _ = _hw(p) if (p.gpu or p.vram) else (None, None)
    inline_ds = dtype == "DEEPSPEED" and not dscfg.get("deepspeed_config_file")
    if p.model and vram and (dtype in ("NO", "MULTI_GPU", "FSDP") or inline_ds) and not schema_errors:
        from .read_keys import Reading, read_accelerate

        reading = (p.reading or Reading()).merge(read_accelerate(data))
        reading.kwargs.update(fsdp_layout_fields(data) or {})     # issue 15: FSDP2 / parallelism_config sizes
        w = world or 1
        if reading.kwargs.get("strategy") is None:
            reading.kwargs["strategy"] = "single" if w == 1 else "ddp"
        out += _fit(file, p, reading, w)

    # accelerate's own launch-time processing: the authority (see _engine_verdict). --gpus x --nodes go to it as
    # num_processes, as `accelerate launch --num_processes` would.
    if p.engines:
        own_errors = any(f.severity == "error" and not f.schema for f in out)
        verdict = _engine_verdict(lambda: load_accelerate(path.resolve(), num_processes=p.world), out, file,
                                  "accelerate")
        out += [f for f in verdict if not (own_errors and f.severity == "error")]
    return out + ds_findings
