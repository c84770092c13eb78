"""The wizard's only door to dsadvise: the same API calls as the CLI, no estimation logic of its own.

:func:`evaluate` turns the fields into an :class:`Outcome` (the estimate shown in the memory bar, the
recommendation when ``advisor.recommend`` is importable, and inline errors by field). No Textual here, so
all of this is testable without a terminal and runs in a worker thread.
"""

from __future__ import annotations

import re
from argparse import Namespace
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..batching import gradient_accumulation
from ..errors import AdvisorError, InputError
from ..cli import flags as _flags
from .form import AUTO, RECOMMENDED, WizardInputs, cli_namespace, command_line, field_for_flag, parse_inputs, vram_text


def _message(exc: AdvisorError) -> str:
    """An error's text without the ``--flag:`` prefix (the wizard shows it under that field)."""
    text = str(exc)
    prefix = f"{getattr(exc, 'field', None)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


_LEADING_FLAG = re.compile(r"--[a-z][a-z0-9-]*(?![\w-])")


def error_field(exc: AdvisorError) -> str | None:
    """The wizard field an API error belongs to: the one standing for the flag it names (``exc.field``), or for an
    error without one (a spec's cross-field check) the flag its message starts with (``--cp needs FSDP2 ...``);
    None: the summary shows it."""
    flag = getattr(exc, "field", None)
    if flag is None:
        lead = _LEADING_FLAG.match(str(exc))
        flag = lead.group(0) if lead else None
    return field_for_flag(flag)


class StrategySource(str, Enum):
    """Where the configuration the wizard shows comes from."""

    NONE = ""                    # nothing evaluated yet
    RECOMMENDED = "recommended"  # the recommender's choice
    CHOSEN = "chosen"            # the strategy the user picked
    DEFAULT = "default"          # the CLI's default (single / ddp): no recommender, or nothing fits

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def label(self) -> str:
        """How the memory panel names it."""
        return "your choice" if self is StrategySource.CHOSEN else self.value


@dataclass
class Outcome:
    """What the wizard shows for one set of inputs."""

    inputs: WizardInputs
    errors: dict[str, str] = field(default_factory=dict)   # field id -> inline message
    missing: list[str] = field(default_factory=list)        # what must still be given before estimating
    model_note: str = ""                                     # how the model text resolved
    problem: dict[str, Any] | None = None                    # keyword arguments of the API call
    estimate: Any = None                                     # advisor.estimate_result.Estimate shown in the bar
    recommendation: Any = None                               # advisor.recommend Recommendation, or None
    recommender_note: str = ""                               # why there is no recommendation
    strategy_source: StrategySource = StrategySource.NONE
    general_error: str = ""                                  # an error no single field owns
    args: Any = None                                         # the argparse.Namespace the CLI would parse
    command: str = ""                                        # the dsadvise command computing what is shown
    assumed: list[str] = field(default_factory=list)         # assumed from the inputs (sequence length, VRAM)

    @property
    def ready(self) -> bool:
        return self.problem is not None and not self.errors and not self.missing


# ------------------------------------------------------------------ recommender


# ------------------------------------------------------------------ evaluation


HARDWARE_KEYS = ("gpus", "nodes", "vram", "gpu", "cpu_ram", "nvme_path", "nvme_size")


def cli_args(inputs: WizardInputs, values: dict[str, object]):
    """The ``argparse.Namespace`` the CLI would parse from the flags the fields stand for (:func:`form.cli_namespace`).

    VRAM left as the GPU picker filled it in is not passed: the GPU's catalog memory is used, exactly as
    ``--gpu`` without ``--vram``.
    """
    vram = values["vram"]
    if inputs.gpu and vram is not None:
        try:
            if inputs.vram.strip() == vram_text(inputs.gpu):
                vram = None
        except AdvisorError:
            pass
    return cli_namespace(inputs, values, vram)


def problem_kwargs(args) -> dict[str, Any]:
    """The problem arguments shared by estimate and recommend, built by the CLI's own function
    (:func:`advisor.cli.flags.problem_kwargs`), plus ``--prompt-len``."""
    return {**_flags.problem_kwargs(args), "prompt_len": args.prompt_len}


def strategy_kwargs(args) -> dict[str, Any]:
    """The strategy and layout arguments ``dsadvise estimate`` passes to :func:`advisor.api.estimate`."""
    return dict(offload_optimizer=args.offload_optimizer, offload_param=args.offload_param,
                bucket_sizes=args.bucket_sizes, sub_group_size=args.sub_group_size, **_flags.layout_kwargs(args))


def _recommend(recommend, resolved, inputs: WizardInputs, kwargs: dict[str, Any], args, profile: Any = None):
    """``advisor.recommend.recommend`` called as ``dsadvise recommend`` calls it: hardware and a training
    template from the API builders; method / precision / checkpointing fixed or ``"auto"`` (searched)."""
    from ..api import build_hardware, build_training, check_against_model

    hw = build_hardware(*(kwargs[k] for k in HARDWARE_KEYS))
    train_kw = {k: v for k, v in kwargs.items() if k not in (*HARDWARE_KEYS, "method", "precision")}
    _flags.refuse_estimate_only(train_kw, "recommend searches transformers/PEFT setups (accelerate, DeepSpeed, FSDP)")
    method = inputs.method
    checkpointing = "none" if kwargs["task"] == "infer" else inputs.checkpointing
    template = build_training(hw, method="full" if method == AUTO else method, precision=kwargs["precision"],
                              checkpointing="none" if checkpointing == AUTO else checkpointing, **train_kw)
    check_against_model(resolved, template)
    extra = {} if profile is None else {"profile": profile}     # a `dsadvise calibrate` profile (--profile)
    return recommend(resolved, hw, template, method=method, precision=inputs.precision,
                     checkpointing=checkpointing, margin=args.margin, max_micro_batch=args.max_micro_batch, **extra)


def _record(out: Outcome, exc: AdvisorError) -> None:
    name = error_field(exc)
    if name is not None:
        out.errors.setdefault(name, _message(exc))
    else:
        out.general_error = str(exc)


LOAD = "load"   # evaluate(recommender=LOAD): advisor.recommend.recommend (the default)


def evaluate(inputs: WizardInputs, *, recommender: Any = LOAD, profile: Any = None) -> Outcome:
    """Estimate (and, where available, recommend) for the wizard's inputs; never raises on bad input.

    ``recommender``: ``LOAD`` imports ``advisor.recommend.recommend``; None estimates only; or a callable
    with its signature (tests pass a fixed one so that screenshots do not follow every rule change).
    ``profile``: a :class:`advisor.profile.MachineProfile` whose measured rates the step times use.
    """
    from ..api import build_hardware, estimate, hardware_notes, resolve_seq_len
    from ..catalog.models import resolve_model

    out = Outcome(inputs=inputs)
    parsed = parse_inputs(inputs)
    out.errors.update(parsed.errors)

    resolved = None
    if not inputs.model.strip():
        out.missing.append("a model")
    else:
        try:
            resolved = resolve_model(inputs.model)
            out.model_note = resolved.note
        except AdvisorError as exc:
            out.errors["model"] = _message(exc)
    if not inputs.gpu and not inputs.vram.strip():
        out.missing.append("a GPU or its memory (VRAM)")
    if out.errors or out.missing or resolved is None:
        return out

    args = cli_args(inputs, parsed.values)
    kwargs = problem_kwargs(args)
    # a blank sequence length is the CLI's default (advisor.api.resolve_seq_len), said beside the model
    kwargs["seq_len"], seq_note = resolve_seq_len(resolved, kwargs["seq_len"])
    if seq_note:
        out.model_note = "; ".join(n for n in (out.model_note, seq_note) if n)
    out.problem = kwargs
    out.args = args
    out.command = command_line(args)
    # what the CLI says it assumed from the inputs (`recommend` lists these first, `estimate` among its notes)
    out.assumed = [seq_note] if seq_note else []
    try:
        out.assumed += hardware_notes(build_hardware(*(kwargs[k] for k in HARDWARE_KEYS)), kwargs["vram"])
    except AdvisorError:
        pass                # a bad hardware field: said at that field by the calls below
    # inference has no training strategy: its layouts are the recommendation's
    chosen = None if inputs.strategy == RECOMMENDED or inputs.task == "infer" else inputs.strategy

    if recommender == LOAD:
        from ..recommend import recommend
        why = ""
    else:
        recommend, why = recommender, "" if recommender is not None else "the recommender is off"
    if recommend is not None:
        try:
            out.recommendation = _recommend(recommend, resolved, inputs, kwargs, args, profile)
        except AdvisorError as exc:
            name = error_field(exc)
            if name is not None and chosen is None:   # bad input: say so at the field, as the CLI would
                out.errors.setdefault(name, _message(exc))
                return out
            # a picked strategy is estimated as `dsadvise estimate` would (a bad field is said there), e.g. a setup
            # the search does not cover; a broken rule file: still show the estimate
            why = f"the recommender {'refused' if name else 'failed'} ({exc})"
    out.recommender_note = why if out.recommendation is None else ""

    rec = out.recommendation
    if chosen is None and rec is not None and rec.found:
        out.strategy_source = StrategySource.RECOMMENDED
        out.estimate = rec.estimate
        return out
    # A strategy the user picked, or (nothing fits / no recommender) the CLI's default one.
    out.strategy_source = StrategySource.CHOSEN if chosen else StrategySource.DEFAULT
    # 'auto' fields take what the recommender chose, else the CLI's defaults (full, no checkpointing).
    picked = rec.recommendation.model_dump(mode="json") if rec is not None and rec.recommendation else {}
    fixed = dict(kwargs)
    if inputs.method == AUTO:
        fixed["method"] = picked.get("method", "full")
    if inputs.precision == AUTO and picked.get("precision"):
        fixed["precision"] = picked["precision"]
    checkpointing = inputs.checkpointing if inputs.checkpointing != AUTO else \
        picked.get("activation_checkpointing", "none")
    if inputs.task == "infer":
        checkpointing = "none"
    if chosen:      # the command that gives this estimate: 'auto' fields as used
        out.command = command_line(Namespace(**{**vars(args), "method": fixed["method"],
                                                "precision": fixed["precision"], "checkpointing": checkpointing}))
    try:
        # the Advanced strategy and layout fields are those of a picked strategy (as `estimate --strategy`)
        out.estimate = estimate(resolved, strategy=chosen, checkpointing=checkpointing, profile=profile,
                                **fixed, **(strategy_kwargs(args) if chosen else {}))
    except AdvisorError as exc:
        _record(out, exc)
    return out


# ------------------------------------------------------------------ renderer


@dataclass
class Preview:
    """The texts of the previewed configs by key (``accelerate``, ``deepspeed``; None: not written) and a note."""

    texts: dict[str, str | None]
    note: str
    files: dict[str, str] = field(default_factory=dict)     # every file the renderer would write: name -> text


PREVIEW_FILES = {"accelerate": "accelerate_config.yaml", "deepspeed": "ds_config.json"}
# issue 16 (helper I): the framework's own file, and the inference scripts (generate --task infer)
INFER_PREVIEW_FILES = {"device_map": "infer_device_map.py", "replicas": "infer_replicas.py"}
PREVIEW_KEYS = (*PREVIEW_FILES, "framework", *INFER_PREVIEW_FILES)


def shown_settings(out: Outcome) -> dict[str, Any] | None:
    """The configuration the wizard shows: the recommendation's settings, or those of the estimated strategy."""
    rec = out.recommendation
    if out.strategy_source is StrategySource.RECOMMENDED and rec is not None and rec.recommendation:
        return rec.recommendation.model_dump(mode="json")
    if out.estimate is not None:
        return out.estimate.strategy.model_dump()
    return None


def render_args(out: Outcome) -> tuple[tuple, dict[str, Any]]:
    """Positional and keyword arguments of ``advisor.render.render_files`` for what the wizard shows, built as
    ``dsadvise generate`` builds them: specs from the API builders, the recommendation's micro-batch,
    precision, method, checkpointing, accumulation and fp16 loss scaling (raises InputError)."""
    from ..api import build_hardware, build_strategy, build_training, layout_fields
    from ..catalog.models import resolve_model

    settings = shown_settings(out)
    if settings is None or out.problem is None:
        raise InputError("nothing to render yet")
    k = out.problem
    model = resolve_model(out.inputs.model)
    hw = build_hardware(*(k[key] for key in HARDWARE_KEYS))
    micro = int(settings["micro_batch_size"])
    # as generate: every training flag, with the shown configuration's micro-batch, precision, method, ...
    _flags.refuse_estimate_only(k, "the configs are transformers/PEFT ones")   # as generate
    recommended = out.strategy_source is StrategySource.RECOMMENDED
    train_kw = {key: v for key, v in k.items() if key not in HARDWARE_KEYS}
    train_kw.update(micro_batch=micro, precision=settings["precision"],
                    optimizer=settings.get("optimizer", k["optimizer"]), method=settings["method"],
                    attention=settings.get("attention", k["attention"]))
    if recommended:    # as generate does with a recommendation: the flags that apply to the recommended setup
        train_kw.update(base_dtype=k["base_dtype"] if settings["method"] in ("lora", "qlora") else "16-bit",
                        sync_each_batch=k["sync_each_batch"] and str(settings["name"]).startswith("fsdp"))
        layout = {key: settings[key] for key in ("tp_size", "sp_size", "cp_size", "dp_replicate_size",
                                                  "fsdp_version") if settings.get(key) is not None}
    elif out.strategy_source is StrategySource.CHOSEN and out.args is not None:   # the layout it was estimated with
        layout = layout_fields(**_flags.layout_kwargs(out.args))
    else:
        layout = {}
    training = build_training(hw, checkpointing=settings["activation_checkpointing"], **train_kw)
    strategy = build_strategy(hw, settings["name"], settings.get("offload_optimizer", "none"),
                              settings.get("offload_param", "none"),
                              getattr(out.args, "bucket_sizes", None) or "auto", **layout)
    if recommended:
        accumulation = int(settings.get("gradient_accumulation_steps") or 1)
    else:
        from ..layout import data_parallel_size     # tp/sp/cp ranks share one batch (issue 15)

        accumulation = gradient_accumulation(k["global_batch"], micro, data_parallel_size(hw, strategy))
    rec = out.recommendation if recommended else None
    return (model, hw, training, strategy), dict(
        gradient_accumulation_steps=accumulation, loss_scaling=settings.get("fp16") if recommended else None,
        estimate=out.estimate, recommendation=rec)


def preview(out: Outcome) -> Preview:
    """What ``dsadvise generate`` would write for what the wizard shows; bad input becomes the note (a bug raises)."""
    empty: dict[str, str | None] = {key: None for key in PREVIEW_KEYS}
    if out.ready and out.inputs.task == "infer":
        return infer_preview(out, empty)
    if not out.ready or out.estimate is None:
        if out.ready:
            return Preview(empty, "Nothing fits: pick a strategy on the Training step, or change the inputs.")
        return Preview(empty, "Fill in the model and hardware to see the configs.")
    from ..render.render import render_files

    try:
        args, kwargs = render_args(out)
        # as generate --framework: the frameworks run the HF Trainer, which fills DeepSpeed's "auto" batch sizes
        files = render_files(*args, hf_trainer=out.inputs.framework != "accelerate", **kwargs)
        framework_file, framework_note = framework_preview(out, args, kwargs, files)
    except AdvisorError as exc:
        return Preview(empty, f"Cannot render this configuration: {exc}")
    texts = {key: files.get(name) for key, name in PREVIEW_FILES.items()}
    texts.update(framework=framework_file, device_map=None, replicas=None)
    notes = [f"{len(files)} files: {', '.join(files)}."]
    if framework_note:
        notes.append(framework_note)
    if texts["deepspeed"] is None:
        notes.append(f"No DeepSpeed JSON: {args[3].name} runs without DeepSpeed.")
    if out.problem.get("sync_each_batch") and not args[2].sync_each_batch:     # as generate says it
        notes.append(f"--sync-each-batch dropped: the recommended {args[3].name} is no FSDP layout (it is an FSDP "
                     "accumulation setting).")
    if not out.estimate.fits:
        notes.append("Warning: by the estimate this configuration does not fit.")
    return Preview(texts, " ".join(notes), files)


def framework_preview(out: Outcome, args: tuple, kwargs: dict, files: dict[str, str]) -> tuple[str | None, str]:
    """The framework's own file for the Framework field, added to ``files`` (its config, as ``generate
    --framework`` writes it), and a note. ``accelerate``: its launch script (the file that framework reads is the
    accelerate YAML already shown). The framework renderer (:mod:`advisor.render.frameworks`) is used where this
    dsadvise has it."""
    framework = out.inputs.framework
    if framework == "accelerate":
        return files.get("launch_accelerate.sh"), "Framework accelerate: launch_accelerate.sh below."
    try:
        from ..render.frameworks import render_framework
    except ImportError:
        return None, f"This dsadvise cannot render {framework} files yet."
    extra = render_framework(*args, framework, gradient_accumulation_steps=kwargs["gradient_accumulation_steps"])
    files.update(extra)
    main = next((n for n in extra if not n.endswith(".sh")), next(iter(extra), None))
    return (extra[main] if main else None), (f"Framework {framework}: {main} below." if main else "")


def infer_preview(out: Outcome, empty: dict[str, str | None]) -> Preview:
    """What ``dsadvise generate --task infer`` would write: the scripts of the layouts that fit."""
    from ..render.infer_plan import plan_inference
    from ..render.infer_render import render_infer_files

    rec = out.recommendation
    if rec is None or not rec.found or rec.recommendation is None:
        return Preview(empty, "No inference layout fits: see the suggestions on the Recommendation step (F4).")
    try:
        from ..api import build_hardware, build_training
        from ..catalog.models import resolve_model

        k = out.problem
        model = resolve_model(out.inputs.model)
        hw = build_hardware(k["gpus"], k["nodes"], k["vram"], k["gpu"], k["cpu_ram"])
        template = build_training(hw, task="infer", seq_len=k["seq_len"], micro_batch=k["micro_batch"],
                                  precision=k["precision"], method=rec.recommendation.method,
                                  attention=k["attention"], prompt_len=k["prompt_len"],
                                  double_quant=k["double_quant"])
        plan = plan_inference(model, out.inputs.model, hw, template, rec)
        files = render_infer_files(plan, model, hw, model_arg=out.inputs.model)
    except AdvisorError as exc:
        return Preview(empty, f"Cannot render this configuration: {exc}")
    texts = dict(empty)
    texts.update({key: files.get(name) for key, name in INFER_PREVIEW_FILES.items()})
    layouts = ", ".join(f"{x.layout} (batch {x.batch_size})" for x in plan.layouts)
    notes = [f"{len(files)} files: {', '.join(files)}.", f"Layouts that fit: {layouts}."]
    notes += [f"Not written: {line}." for line in plan.not_fitting]
    return Preview(texts, " ".join(notes), files)


def save(out: Outcome, shown: Preview | None, out_dir: str, *, force: bool) -> list:
    """Write the previewed set into ``out_dir`` as ``dsadvise generate --no-engine-check`` does: validate (parse,
    JSON Schema), then the renderer's writer (atomic files; a non-empty folder only with ``force``). Loading
    the files in accelerate and DeepSpeed is left to Dry run. Raises AdvisorError with one line."""
    from ..render.validate import errors_of, validate_files
    from ..render.write import write_files

    if shown is None or not shown.files:
        raise AdvisorError(shown.note if shown is not None and shown.note else "nothing to save yet")
    if not out_dir.strip():
        raise InputError("give a folder to save into", field="output_dir")
    # as generate: never write files that do not validate (the engine load is Dry run's)
    if "dsadvise.json" in shown.files and '"task": "infer"' in shown.files["dsadvise.json"]:
        from ..render.infer_render import validate_infer_files

        problems = validate_infer_files(shown.files)
        if problems:
            raise AdvisorError("the rendered files do not parse (a dsadvise bug): " + problems[0])
        return write_files(shown.files, out_dir.strip(), force=force)
    errors = errors_of(validate_files(shown.files, engines=False))
    if errors:
        raise AdvisorError("the rendered files do not validate (a dsadvise bug): " + errors[0].line())
    return write_files(shown.files, out_dir.strip(), force=force)


def dry_run(folder: str, *, timeout: float | None = None) -> tuple[bool, list[str]]:
    """``dsadvise dry-run`` on a saved folder (the renderer's ``dry_run``): passed?, and one line per step,
    finding and override. Slow (loads the engines, launches a tiny proxy run): call it from a thread."""
    from ..render.infer_dryrun import dry_run_folder as run_dry     # training and inference folders

    report = run_dry(folder) if timeout is None else run_dry(folder, timeout=timeout)
    lines = []
    for step in report.steps:
        detail = f": {step.detail}" if step.detail else ""
        lines.append(f"{step.status.upper():<5} {step.name} ({step.seconds:.1f} s){detail}")
        lines += [f"      {f.line()}" for f in step.findings]
    lines += [f"note: {o}" for o in report.overrides]
    return bool(report.passed), lines
