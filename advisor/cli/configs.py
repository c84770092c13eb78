"""The ``generate``, ``check`` and ``dry-run`` sub-commands.

Only argparse work happens at import (``dsadvise --help`` must stay fast): jinja2, jsonschema, accelerate,
DeepSpeed and torch load inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import exit_codes
from ..errors import NothingFits
from . import flags


def register(sub) -> None:
    """Add ``generate``, ``check`` and ``dry-run`` to the ``dsadvise`` sub-parsers."""
    p = sub.add_parser("generate", help="write accelerate YAML, DeepSpeed JSON and launch scripts for a configuration",
                       description="Render accelerate_config.yaml, ds_config.json (DeepSpeed strategies), launch "
                                   "scripts (accelerate, deepspeed, torchrun; hostfile and slurm.sbatch for several "
                                   "nodes) and a README.md saying why each setting was chosen. Without --strategy "
                                   "the recommender picks the configuration.")
    flags.add_problem_flags(p, with_strategy=True)
    p.set_defaults(checkpointing=None)
    flags.add(p, ("--prompt-len",))   # --task infer (advisor/cli/infer.py)
    flags.add(p.add_argument_group("output"),
              ("--out", "--force", "--hf-trainer", "--main-process-ip", "--main-process-port", "--no-engine-check"),
              out={"required": True})
    flags.add(p.add_argument_group("framework"), ("--framework", "--preset"))   # issue 16 (helper F)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("check", help="lint a DeepSpeed JSON, accelerate YAML or framework file; estimate it",
                       description="Report what DeepSpeed or accelerate would reject, and what they silently accept "
                                   "but is wrong. With --model and --vram/--gpu, estimate the run the file launches: "
                                   "every key that changes memory is read into the estimate or named as not counted "
                                   "(docs/frameworks.md). Exit 1 on errors, 0 with warnings only, 2 when the file "
                                   "cannot be read.")
    p.add_argument("file", metavar="FILE", help="ds_config.json or accelerate_config.yaml")
    flags.add(p, ("--gpus", "--nodes", "--model", "--vram", "--gpu", "--cpu-ram", "--seq-len", "--micro-batch",
                  "--checkpointing", "--optimizer", "--method", "--batch-lengths", "--no-engine-check", "--json",
                  "--strict", "--script"),
              gpus={"default": None, "help": "GPUs per node (checks the batch arithmetic)"},
              nodes={"default": None, "help": "number of nodes"},
              model={"help": "model (size, catalog name or config.json) for the fit check"},
              vram={"help": "GiB per GPU (bucket sizes, fit)"},
              gpu={"help": "GPU catalog name (VRAM, bf16 support)"},
              cpu_ram={"help": "CPU RAM per node in GiB (offload fit)"},
              seq_len={"default": None,
                       "help": "tokens per sample (default: from a dsadvise.json beside FILE, else 2048)"},
              micro_batch={"default": None, "help": "micro-batch when the file does not say (YAML, 'auto')"},
              checkpointing={"default": None, "help": "activation checkpointing of the run (default: from a "
                                                      "dsadvise.json beside FILE, else none)"},
              optimizer={"default": None, "help": "default: from a dsadvise.json beside FILE, else adamw"},
              method={"default": None, "help": "default: from a dsadvise.json beside FILE, else full"},
              batch_lengths={"default": None, "help": "fixed or variable (each batch padded to its longest sample); "
                                                      "default: the framework file's packing / padding keys, else a "
                                                      "dsadvise.json beside FILE, else fixed"},   # issue 17 (L)
              no_engine_check={"help": "skip loading the file in accelerate/DeepSpeed"},
              json={"help": "print the findings as JSON"})
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("dry-run", help="load a generated folder in the real engines and train a tiny proxy on CPU",
                       description="Step 1: load accelerate_config.yaml and ds_config.json with accelerate and "
                                   "DeepSpeed. Step 2: accelerate launch --config_file DIR/accelerate_config.yaml a "
                                   "tiny model shaped like the target for two optimizer steps on this machine's CPU "
                                   "(at most 2 processes, one machine; changes are reported), asserting the world "
                                   "size, ZeRO stage, offload devices and precision inside the run.")
    p.add_argument("dir", metavar="DIR", help="a folder written by dsadvise generate")
    flags.add(p, ("--timeout",))
    p.add_argument("--gpu", action="store_true", help="run on CUDA instead of the CPU (skipped without a GPU)")
    flags.add(p, ("--keep-logs", "--json"), json={"help": "print the report as JSON"})
    p.set_defaults(func=cmd_dry_run)


# ---------------------------------------------------------------- generate

def plan(args):
    """(model, hw, training, strategy, gas, recommendation) from the flags, via the recommender without --strategy."""
    from ..api import build_hardware, build_strategy, build_training, hardware_notes, resolve_seq_len
    from ..batching import gradient_accumulation
    from ..catalog.models import resolve_model
    from ..errors import InputError

    kw = flags.problem_kwargs(args)
    if getattr(args, "framework", None) == "trl" and kw["loss"] is None:
        # TRL's SFTTrainer computes the loss with its own tiled fused LM head whatever its config says
        # (trl/trainer/sft_trainer.py add_fused_lm_head): estimated as that head (docs/frameworks.md)
        kw["loss"] = "trl-head"
    model = resolve_model(args.model)
    hw = build_hardware(kw["gpus"], kw["nodes"], kw["vram"], kw["gpu"], kw["cpu_ram"], kw["nvme_path"],
                        kw["nvme_size"])
    kw["seq_len"], seq_note = resolve_seq_len(model, kw["seq_len"])
    args.assumed = ([seq_note] if seq_note else []) + hardware_notes(hw, kw["vram"])
    train_kw = dict(task=kw["task"], seq_len=kw["seq_len"], micro_batch=kw["micro_batch"],
                    global_batch=kw["global_batch"], optimizer=kw["optimizer"], method=kw["method"],
                    lora_rank=kw["lora_rank"], lora_targets=kw["lora_targets"], attention=kw["attention"],
                    freeze_layers=kw["freeze_layers"], loss=kw["loss"], loss_chunks=kw["loss_chunks"],
                    offload_activations=kw["offload_activations"], expandable_segments=kw["expandable_segments"],
                    double_quant=kw["double_quant"], lora_dropout=kw["lora_dropout"],
                    tiled_mlp=kw["tiled_mlp"],   # issue 15 (helper T)
                    torch_version=kw["torch_version"], transformers_version=kw["transformers_version"],  # issue 17
                    base_dtype=kw["base_dtype"],   # issue 17
                    sync_each_batch=kw["sync_each_batch"],   # issue 17 (helper L)
                    checkpoint_save=kw["checkpoint_save"],   # issue 17
                    deepspeed_version=kw["deepspeed_version"],   # session 10 (helper R)
                    batch_lengths=kw["batch_lengths"])   # issue 17 (helper L)
    flags.refuse_estimate_only(kw, "generate renders transformers/PEFT configs")
    if kw["task"] != "train":
        raise InputError("generate renders training configs; --task infer has nothing to launch", field="--task")
    if args.strategy is not None:
        training = build_training(hw, precision=kw["precision"], checkpointing=args.checkpointing or "none",
                                  **train_kw)
        from ..api import layout_fields
        from ..layout import check_layout, data_parallel_size

        strategy = build_strategy(hw, args.strategy, args.offload_optimizer, args.offload_param, args.bucket_sizes,
                                  **layout_fields(**flags.layout_kwargs(args)))
        check_layout(model.architecture, hw, training, strategy)      # issue 15
        gas = gradient_accumulation(training.global_batch_size, training.micro_batch_size,
                                    data_parallel_size(hw, strategy))
        from ..api import check_sync_each_batch

        args.assumed += check_sync_each_batch(training, strategy, gas)   # issue 17 (helper L)
        return model, hw, training, strategy, gas, None
    if args.offload_optimizer != "none" or args.offload_param != "none":
        raise InputError("--offload-* needs --strategy (without it the recommender decides offload)",
                         field="--strategy")
    from ..recommend import recommend

    template = build_training(hw, precision=kw["precision"], checkpointing=args.checkpointing or "none", **train_kw)
    rec = recommend(model, hw, template, method=kw["method"], precision=kw["precision"] or "auto",
                    checkpointing=args.checkpointing or "auto")
    if not rec.found or not rec.recommendation:
        hints = "; ".join(s.change for s in rec.suggestions[:3]) if rec.suggestions else ""
        why = "; ".join(rec.reasons[-2:])
        why = why[len("nothing fits: "):] if why.startswith("nothing fits: ") else why
        raise NothingFits("nothing fits, so there is nothing to generate: " + why
                          + (f" (what would: {hints})" if hints else ""))
    r = rec.recommendation
    training = build_training(hw, task="train", seq_len=kw["seq_len"], micro_batch=r.micro_batch_size,
                              global_batch=kw["global_batch"], precision=r.precision, optimizer=r.optimizer,
                              method=r.method, lora_rank=kw["lora_rank"], lora_targets=kw["lora_targets"],
                              checkpointing=r.activation_checkpointing, attention=r.attention,
                              freeze_layers=kw["freeze_layers"], loss=kw["loss"], loss_chunks=kw["loss_chunks"],
                              offload_activations=kw["offload_activations"],
                              expandable_segments=kw["expandable_segments"], double_quant=kw["double_quant"],
                              lora_dropout=kw["lora_dropout"], tiled_mlp=kw["tiled_mlp"],
                              torch_version=kw["torch_version"], transformers_version=kw["transformers_version"],
                              base_dtype=kw["base_dtype"] if r.method in ("lora", "qlora") else "16-bit",   # issue 17
                              # issue 17 (helper L): an FSDP setting; the recommended layout decides whether it applies
                              sync_each_batch=kw["sync_each_batch"] and r.name.startswith("fsdp"),
                              checkpoint_save=kw["checkpoint_save"],   # issue 17: for whichever layout is chosen
                              deepspeed_version=kw["deepspeed_version"],   # session 10 (helper R)
                              batch_lengths=kw["batch_lengths"])   # issue 17 (helper L)
    strategy = build_strategy(hw, r.name, r.offload_optimizer, r.offload_param, args.bucket_sizes,
                              tp_size=r.tp_size, sp_size=r.sp_size, cp_size=r.cp_size,     # issue 15 layout
                              dp_replicate_size=r.dp_replicate_size, fsdp_version=r.fsdp_version)
    if kw["sync_each_batch"] and not training.sync_each_batch:
        args.assumed.append(f"--sync-each-batch dropped: the recommended {r.name} is no FSDP layout (it is an "
                            "FSDP accumulation setting)")
    return model, hw, training, strategy, r.gradient_accumulation_steps, rec


def cmd_generate(args: argparse.Namespace) -> int:
    if args.task == "infer":
        from .infer import cmd_generate_infer

        return cmd_generate_infer(args)
    from ..formatting import fmt_bytes
    from ..render.render import render_files
    from ..render.validate import StepStatus, errors_of, validate_files
    from ..render.write import write_files

    from ..render.frameworks.cli import apply_preset, framework_files, plan_for_framework

    apply_preset(args)
    model, hw, training, strategy, gas, rec = plan_for_framework(plan, args)
    framework = getattr(args, "framework", "accelerate")
    args.hf_trainer = args.hf_trainer or framework != "accelerate"   # the frameworks run the HF Trainer: "auto"
    fp16 = rec.recommendation.fp16 if rec is not None and rec.recommendation is not None else None
    loss_scaling = fp16.model_dump() if fp16 is not None else None
    files = render_files(model, hw, training, strategy, gradient_accumulation_steps=gas, hf_trainer=args.hf_trainer,
                         loss_scaling=loss_scaling, main_process_ip=args.main_process_ip,
                         main_process_port=args.main_process_port,
                         estimate=rec.estimate if rec is not None and rec.estimate is not None
                         and _same(rec.estimate, training, strategy) else None, recommendation=rec)
    extra, fw_steps = framework_files(framework, model, hw, training, strategy, gas, files, args)
    files.update(extra)
    steps = validate_files(files, engines=not args.no_engine_check) + fw_steps
    errors = errors_of(steps)
    if errors:   # a bug of ours: never write files the engines refuse
        print("dsadvise: internal error: the rendered files do not validate: " + errors[0].line(), file=sys.stderr)
        return exit_codes.FAILED
    written = write_files(files, args.out, force=args.force)
    from ..memory.core import estimate_memory

    est = estimate_memory(model, hw, training, strategy)
    if args.json:
        print(json.dumps({"out": str(args.out), "files": [p.name for p in written], "strategy": strategy.name,
                          "gradient_accumulation_steps": gas, "recommended": rec is not None, "framework": framework,
                          "fits": est.fits, "per_gpu_bytes": est.per_gpu.total,
                          "checks": [s.to_json() for s in steps],
                          "assumptions": list(getattr(args, "assumed", []))}, indent=2))
    else:
        how = "recommended" if rec is not None else "given"
        print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
        print(f"{model.name}: {strategy.name} ({how}), {training.precision}, micro-batch {training.micro_batch_size} "
              f"x accumulation {gas} x {hw.world_size} GPU(s); estimate {fmt_bytes(est.per_gpu.total)} of "
              f"{fmt_bytes(hw.vram_bytes)} per GPU")
        for note in getattr(args, "assumed", []):
            print(f"assumed: {note}")
        checked = [s.name for s in steps if s.status == StepStatus.PASS]
        print("checked: " + ", ".join(checked))
        for s in steps:
            if s.status == StepStatus.SKIP:
                print(f"not checked: {s.name}: {s.detail}")
    if not est.fits:
        print(f"dsadvise: warning: by the estimate this does not fit ({fmt_bytes(est.per_gpu.total)} per GPU of "
              f"{fmt_bytes(hw.vram_bytes)}); see README.md or try `dsadvise recommend`", file=sys.stderr)
    return exit_codes.OK


def _same(est, training, strategy) -> bool:
    s = est.strategy
    return (s.name == strategy.name and s.offload_optimizer == strategy.offload_optimizer
            and s.offload_param == strategy.offload_param and s.precision == training.precision
            and s.micro_batch_size == training.micro_batch_size
            and s.activation_checkpointing == training.activation_checkpointing)


# ---------------------------------------------------------------- check

def _sidecar_training(file: Path) -> dict:
    """The ``training`` block of a ``dsadvise.json`` beside ``file`` (written by generate), or {}."""
    sidecar = file.parent / "dsadvise.json"
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    training = data.get("training") if isinstance(data, dict) else None
    return training if isinstance(training, dict) else {}


def cmd_check(args: argparse.Namespace) -> int:
    from ..render.lint import Problem, lint_file

    # Settings a DeepSpeed JSON / accelerate YAML cannot hold (checkpointing, sequence length, method) come
    # from the flags, else from the dsadvise.json that `generate` writes beside the configs.
    training = _sidecar_training(Path(args.file))
    problem = Problem(gpus=args.gpus, nodes=args.nodes, model=args.model, vram=args.vram, gpu=args.gpu,
                      cpu_ram=args.cpu_ram, seq_len=args.seq_len or training.get("seq_len", 2048),
                      micro_batch=args.micro_batch or training.get("micro_batch_size"),
                      checkpointing=args.checkpointing or training.get("activation_checkpointing", "none"),
                      optimizer=args.optimizer or training.get("optimizer", "adamw"),
                      method=args.method or training.get("method", "full"),
                      engines=not args.no_engine_check, script=args.script,
                      batch_lengths=args.batch_lengths or training.get("batch_lengths", "fixed"))   # issue 17 (L)
    findings = lint_file(args.file, problem)
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]
    if args.json:
        estimates = [f.estimate for f in findings if f.estimate is not None]
        print(json.dumps({"file": args.file, "errors": len(errors), "warnings": len(warnings),
                          "estimate": estimates[0] if estimates else None,   # the fit verdict's numbers, if any
                          "findings": [f.to_json() for f in findings]}, indent=2))
    else:
        order = {"error": 0, "warning": 1, "info": 2}
        for f in sorted(findings, key=lambda f: order[f.severity]):
            print(f.line())
        print(f"{args.file}: {len(errors)} error(s), {len(warnings)} warning(s)")
    return exit_codes.FAILED if errors or (getattr(args, "strict", False) and warnings) else exit_codes.OK


# ---------------------------------------------------------------- dry-run

def cmd_dry_run(args: argparse.Namespace) -> int:
    from ..render.infer_dryrun import dry_run_folder     # inference folders (generate --task infer) too

    report = dry_run_folder(args.dir, timeout=args.timeout, gpu=args.gpu, keep=args.keep_logs)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for s in report.steps:
            print(f"{s.status.upper():<5} {s.name} ({s.seconds:.1f} s){': ' + s.detail if s.detail else ''}")
            for f in s.findings:
                print(f"      {f.line()}")
        verdict = "PASSED" if report.passed else "FAILED"
        if report.passed and not report.launched:
            verdict += " (loaded only; the launch was skipped)"
        print(f"dry-run {verdict}: {report.folder}")
    return exit_codes.OK if report.passed else exit_codes.FAILED
