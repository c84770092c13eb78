"""The wizard's only door to dsadvise: the same API calls as the CLI, no estimation logic of its own.

:func:`evaluate` turns the fields into an :class:`Outcome` (the estimate shown in the memory bar, the
recommendation when ``advisor.recommend`` is importable, and inline errors by field). No Textual here, so
all of this is testable without a terminal and runs in a worker thread.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdvisorError, InputError
from .form import AUTO, RECOMMENDED, WizardInputs, field_for_flag, parse_inputs, vram_text


def _message(exc: AdvisorError) -> str:
    """An error's text without the ``--flag:`` prefix (the wizard shows it under that field)."""
    text = str(exc)
    prefix = f"{getattr(exc, 'field', None)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


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
    strategy_source: str = ""                                # recommended | chosen | default
    general_error: str = ""                                  # an error no single field owns

    @property
    def ready(self) -> bool:
        return self.problem is not None and not self.errors and not self.missing


# ------------------------------------------------------------------ recommender


def load_recommender() -> tuple[Any, str]:
    """``advisor.recommend.recommend`` and "" when importable, else None and why not."""
    try:
        module = importlib.import_module("advisor.recommend")
    except Exception as exc:  # the package is missing or half-written: the wizard still estimates
        return None, f"the recommender is unavailable ({type(exc).__name__}: {exc})"
    func = getattr(module, "recommend", None)
    if not callable(func):
        return None, "the recommender is unavailable (advisor.recommend has no recommend())"
    return func, ""


# ------------------------------------------------------------------ evaluation


def problem_kwargs(inputs: WizardInputs, values: dict[str, object]) -> dict[str, Any]:
    """The problem arguments shared by estimate and recommend, as the CLI builds them.

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
    return dict(
        gpus=values["gpus"], nodes=values["nodes"], vram=vram, gpu=inputs.gpu or None,
        cpu_ram=values["cpu_ram"], task="train", seq_len=values["seq_len"], micro_batch=values["micro_batch"],
        global_batch=values["global_batch"], precision=None if inputs.precision == AUTO else inputs.precision,
        optimizer=inputs.optimizer, method=inputs.method, lora_rank=values["lora_rank"])


def _recommend(recommend, resolved, inputs: WizardInputs, kwargs: dict[str, Any]):
    """``advisor.recommend.recommend`` called as ``dsadvise recommend`` calls it: hardware and a training
    template from the API builders; method / precision / checkpointing fixed or ``"auto"`` (searched)."""
    from ..api import build_hardware, build_training

    hw = build_hardware(kwargs["gpus"], kwargs["nodes"], kwargs["vram"], kwargs["gpu"], kwargs["cpu_ram"])
    method = inputs.method
    template = build_training(hw, task=kwargs["task"], seq_len=kwargs["seq_len"],
                              micro_batch=kwargs["micro_batch"], global_batch=kwargs["global_batch"],
                              precision=kwargs["precision"], optimizer=kwargs["optimizer"],
                              method="full" if method == AUTO else method, lora_rank=kwargs["lora_rank"])
    return recommend(resolved, hw, template, method=method, precision=inputs.precision,
                     checkpointing=inputs.checkpointing)


def _record(out: Outcome, exc: AdvisorError) -> None:
    name = field_for_flag(getattr(exc, "field", None))
    if name is not None:
        out.errors.setdefault(name, _message(exc))
    else:
        out.general_error = str(exc)


LOAD = "load"   # evaluate(recommender=LOAD): import advisor.recommend (the default)


def evaluate(inputs: WizardInputs, *, recommender: Any = LOAD) -> Outcome:
    """Estimate (and, where available, recommend) for the wizard's inputs; never raises on bad input.

    ``recommender``: ``LOAD`` imports ``advisor.recommend.recommend``; None estimates only; or a callable
    with its signature (tests pass a fixed one so that screenshots do not follow every rule change).
    """
    from ..api import estimate
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

    kwargs = problem_kwargs(inputs, parsed.values)
    out.problem = kwargs
    chosen = None if inputs.strategy == RECOMMENDED else inputs.strategy

    if recommender == LOAD:
        recommend, why = load_recommender()
    else:
        recommend, why = recommender, "" if recommender is not None else "the recommender is off"
    if recommend is not None:
        try:
            out.recommendation = _recommend(recommend, resolved, inputs, kwargs)
        except AdvisorError as exc:
            name = field_for_flag(getattr(exc, "field", None))
            if name is not None:                 # bad input: say so at the field, as the CLI would
                out.errors.setdefault(name, _message(exc))
                return out
            why = f"the recommender failed ({exc})"    # e.g. a broken rule file: still show the estimate
        except Exception as exc:  # a recommender bug must not take the wizard down: fall back to the estimate
            why = f"the recommender failed ({type(exc).__name__}: {exc})"
    out.recommender_note = why if out.recommendation is None else ""

    rec = out.recommendation
    if chosen is None and rec is not None and rec.found:
        out.strategy_source = "recommended"
        out.estimate = rec.estimate
        return out
    # A strategy the user picked, or (nothing fits / no recommender) the CLI's default one.
    out.strategy_source = "chosen" if chosen else "default"
    # 'auto' fields take what the recommender chose, else the CLI's defaults (full, no checkpointing).
    picked = rec.recommendation.model_dump(mode="json") if rec is not None and rec.recommendation else {}
    fixed = dict(kwargs)
    if inputs.method == AUTO:
        fixed["method"] = picked.get("method", "full")
    if inputs.precision == AUTO and picked.get("precision"):
        fixed["precision"] = picked["precision"]
    checkpointing = inputs.checkpointing if inputs.checkpointing != AUTO else \
        picked.get("activation_checkpointing", "none")
    try:
        out.estimate = estimate(resolved, strategy=chosen, checkpointing=checkpointing, **fixed)
    except AdvisorError as exc:
        _record(out, exc)
    return out


# ------------------------------------------------------------------ renderer


def load_renderer() -> tuple[Any, str]:
    """``advisor.render`` and "" when it is importable and has ``render_files``, else None and why not."""
    try:
        module = importlib.import_module("advisor.render")
    except Exception as exc:
        return None, f"the renderer is unavailable ({type(exc).__name__}: {exc})"
    if not callable(getattr(module, "render_files", None)):
        return None, "the renderer is unavailable (advisor.render has no render_files())"
    return module, ""


@dataclass
class Preview:
    """The texts of the previewed configs by key (``accelerate``, ``deepspeed``; None: not written) and a note."""

    texts: dict[str, str | None]
    note: str
    files: dict[str, str] = field(default_factory=dict)     # every file the renderer would write: name -> text


PREVIEW_FILES = {"accelerate": "accelerate_config.yaml", "deepspeed": "ds_config.json"}


def shown_settings(out: Outcome) -> dict[str, Any] | None:
    """The configuration the wizard shows: the recommendation's settings, or those of the estimated strategy."""
    rec = out.recommendation
    if out.strategy_source == "recommended" and rec is not None and rec.recommendation:
        return rec.recommendation.model_dump(mode="json")
    if out.estimate is not None:
        return out.estimate.strategy.model_dump()
    return None


def _accumulation(global_batch: int | None, micro: int, world: int) -> int:
    """Gradient accumulation for a global batch, refused as ``dsadvise generate`` refuses it when it does not
    divide (DeepSpeed needs train_batch_size = micro x accumulation x world)."""
    if global_batch is None:
        return 1
    if global_batch % (micro * world):
        raise InputError(f"{global_batch} is not a multiple of micro-batch {micro} x {world} GPU(s) = "
                         f"{micro * world}", field="--global-batch")
    return global_batch // (micro * world)


def render_args(out: Outcome) -> tuple[tuple, dict[str, Any]]:
    """Positional and keyword arguments of ``advisor.render.render_files`` for what the wizard shows, built as
    ``dsadvise generate`` builds them: specs from the API builders, the recommendation's micro-batch,
    precision, method, checkpointing, accumulation and fp16 loss scaling (raises InputError)."""
    from ..api import build_hardware, build_strategy, build_training
    from ..catalog.models import resolve_model

    settings = shown_settings(out)
    if settings is None or out.problem is None:
        raise InputError("nothing to render yet")
    k = out.problem
    model = resolve_model(out.inputs.model)
    hw = build_hardware(k["gpus"], k["nodes"], k["vram"], k["gpu"], k["cpu_ram"])
    micro = int(settings["micro_batch_size"])
    training = build_training(hw, task=k["task"], seq_len=k["seq_len"], micro_batch=micro,
                              global_batch=k["global_batch"], precision=settings["precision"],
                              optimizer=settings.get("optimizer", k["optimizer"]), method=settings["method"],
                              lora_rank=k["lora_rank"], checkpointing=settings["activation_checkpointing"],
                              attention=settings.get("attention", "sdpa"))
    strategy = build_strategy(hw, settings["name"], settings.get("offload_optimizer", "none"),
                              settings.get("offload_param", "none"))
    recommended = out.strategy_source == "recommended"
    if recommended:
        accumulation = int(settings.get("gradient_accumulation_steps") or 1)
    else:
        accumulation = _accumulation(k["global_batch"], micro, hw.world_size)
    rec = out.recommendation if recommended else None
    return (model, hw, training, strategy), dict(
        gradient_accumulation_steps=accumulation, loss_scaling=settings.get("fp16") if recommended else None,
        estimate=out.estimate, recommendation=rec)


def preview(out: Outcome) -> Preview:
    """What ``dsadvise generate`` would write for what the wizard shows; never raises."""
    empty: dict[str, str | None] = {key: None for key in PREVIEW_FILES}
    if not out.ready or out.estimate is None:
        if out.ready:
            return Preview(empty, "Nothing fits: pick a strategy on the Training step, or change the inputs.")
        return Preview(empty, "Fill in the model and hardware to see the configs.")
    render, why = load_renderer()
    if render is None:
        return Preview(empty, why[0].upper() + why[1:] + ": no configs to preview yet.")
    try:
        args, kwargs = render_args(out)
        files = render.render_files(*args, **kwargs)
    except AdvisorError as exc:
        return Preview(empty, f"Cannot render this configuration: {exc}")
    except Exception as exc:  # a renderer bug: say so, keep the wizard alive
        return Preview(empty, f"The renderer failed: {type(exc).__name__}: {exc}")
    texts = {key: files.get(name) for key, name in PREVIEW_FILES.items()}
    notes = [f"{len(files)} files: {', '.join(files)}."]
    if texts["deepspeed"] is None:
        notes.append(f"No DeepSpeed JSON: {args[3].name} runs without DeepSpeed.")
    if not out.estimate.fits:
        notes.append("Warning: by the estimate this configuration does not fit.")
    return Preview(texts, " ".join(notes), files)


def save(out: Outcome, shown: Preview | None, out_dir: str, *, force: bool) -> list:
    """Write the previewed set into ``out_dir`` as ``dsadvise generate --no-engine-check`` does: validate (parse,
    JSON Schema), then the renderer's writer (atomic files; a non-empty folder only with ``force``). Loading
    the files in accelerate and DeepSpeed is left to Dry run. Raises AdvisorError with one line."""
    render, why = load_renderer()
    if render is None or not callable(getattr(render, "write_files", None)):
        raise AdvisorError(why or "the renderer cannot write files yet")
    if shown is None or not shown.files:
        raise AdvisorError(shown.note if shown is not None and shown.note else "nothing to save yet")
    if not out_dir.strip():
        raise InputError("give a folder to save into", field="output_dir")
    validate = getattr(render, "validate_files", None)
    if callable(validate):      # as generate: never write files that do not validate (the engine load: Dry run)
        from ..render.validate import errors_of

        errors = errors_of(validate(shown.files, engines=False))
        if errors:
            raise AdvisorError("the rendered files do not validate (a dsadvise bug): " + errors[0].line())
    return render.write_files(shown.files, out_dir.strip(), force=force)


def dry_run(folder: str, *, timeout: float | None = None) -> tuple[bool, list[str]]:
    """``dsadvise dry-run`` on a saved folder (the renderer's ``dry_run``): passed?, and one line per step,
    finding and override. Slow (loads the engines, launches a tiny proxy run): call it from a thread."""
    render, why = load_renderer()
    func = getattr(render, "dry_run", None) if render is not None else None
    if not callable(func):
        raise AdvisorError(why or "the renderer has no dry_run() yet")
    report = func(folder) if timeout is None else func(folder, timeout=timeout)
    lines = []
    for step in report.steps:
        detail = f": {step.detail}" if step.detail else ""
        lines.append(f"{step.status.upper():<5} {step.name} ({step.seconds:.1f} s){detail}")
        lines += [f"      {f.line()}" for f in step.findings]
    lines += [f"note: {o}" for o in report.overrides]
    return bool(report.passed), lines
