"""What the wizard's fields hold, as plain data, and how their text becomes API arguments.

No Textual here: the widgets fill a :class:`WizardInputs`, :mod:`advisor.tui.backend` turns it into the
``argparse.Namespace`` the CLI would parse (:func:`cli_namespace`) and from it the same keyword arguments the CLI
passes to :func:`advisor.api.estimate` / ``advisor.recommend.recommend``. Field text is parsed with the CLI's own
argument types (the flag table, :mod:`advisor.cli.flags`), so the wizard and ``dsadvise`` accept and reject the
same values with the same words. Flags with a hand-made field name it in the table (``wizard_field``); every
other flag of ``estimate`` / ``recommend`` gets a generated field (:data:`ADVANCED`) in an Advanced section of
the step its group belongs to (:data:`SECTIONS`), except the CLI-only switches (:data:`CLI_ONLY`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from ..cli.flags import (ATTENTION, AUTO, CHECKPOINTING, FLAG_WIZARD_FIELDS, FLAGS, LOSSES, METHODS, OPTIMIZERS,
                         PRECISIONS, RECOMMENDED, STRATEGIES, TASKS, WIZARD_FIELD_FLAGS, Flag, gib, positive_int)
from ..cli import flags as _flags

METHOD_CHOICES = (*METHODS, AUTO)
PRECISION_CHOICES = (AUTO, *PRECISIONS)
OPTIMIZER_CHOICES = OPTIMIZERS
CHECKPOINTING_CHOICES = (AUTO, *CHECKPOINTING)
STRATEGY_CHOICES = (RECOMMENDED, *STRATEGIES)
# issue 16 (helper I): task switch, method details, framework
TASK_CHOICES = TASKS
ATTENTION_CHOICES = ATTENTION
LOSS_CHOICES = (AUTO, *LOSSES)     # auto: the CLI's default (plain; legacy-inline under an old --transformers-version)
DOUBLE_QUANT_CHOICES = ("yes", "no")
# the frameworks `generate --framework` renders (the flag table's choices once that flag exists)
FRAMEWORK_CHOICES: tuple[str, ...] = getattr(_flags, "FRAMEWORKS", ("accelerate",))

# ---------------------------------------------------------------- the Advanced areas, generated from the flag table

# Flags of estimate / recommend with no wizard field: the table's CLI_ONLY (tests/tui/test_advanced.py checks the rest).
CLI_ONLY = _flags.CLI_ONLY


class Section(NamedTuple):
    """An Advanced area: where a group of the flag table goes."""

    id: str
    step: str                     # the wizard step it sits on
    title: str
    note: str                     # one line at its top ("" for none)
    flags: tuple[str, ...]        # the flags it may hold (those without a hand-made field land here)


SECTIONS: tuple[Section, ...] = (
    Section("hardware", "hardware", "Advanced: storage", "", _flags.HARDWARE_FLAGS),
    Section("training", "training", "Advanced: training", "", _flags.TRAINING_FLAGS),
    Section("strategy", "training", "Advanced: strategy and layout",
            "These apply to the strategy you pick (Strategy above), as dsadvise estimate --strategy; the "
            "recommender searches strategies itself.",
            (*_flags.STRATEGY_FLAGS, *_flags.LAYOUT_FLAGS, *_flags.ESTIMATE_FLAGS)),
    Section("search", "training", "Advanced: the recommender's search", "How dsadvise recommend searches.",
            _flags.RECOMMEND_FLAGS),
)
SWITCH_CHOICES = ("no", "yes")     # a store_true flag: "yes" passes it


def _cli_parse(flag: Flag) -> Callable[[str], object]:
    """Parse a field's text as argparse parses ``flag``'s (its type; blank: the flag's default), failing with the
    words argparse prints after ``argument --flag:``."""
    convert = flag.type or str

    def parse(text: str) -> object:
        text = text.strip()
        if flag.action == "store_true":
            return text == "yes"
        if not text:
            return flag.default
        try:
            return convert(text)
        except argparse.ArgumentTypeError:
            raise
        except (TypeError, ValueError):   # argparse's own words for a plain type (argparse._get_values)
            name = getattr(convert, "__name__", repr(convert))
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}") from None
    return parse


@dataclass(frozen=True)
class AdvancedField:
    """One generated field: a flag of the table with no hand-made wizard field."""

    flag: Flag
    section: str                  # a SECTIONS id

    @property
    def name(self) -> str:        # the field id: the flag's argparse dest
        return self.flag.dest

    @property
    def kind(self) -> str:
        """``switch`` (a Checkbox), ``choice`` (a Select) or ``text`` (an Input checked by the CLI's parser)."""
        return "switch" if self.flag.action == "store_true" else "choice" if self.flag.choices else "text"

    @property
    def choices(self) -> tuple[str, ...]:
        return SWITCH_CHOICES if self.kind == "switch" else tuple(str(c) for c in self.flag.choices or ())

    @property
    def default(self) -> str:
        """The field's text when the flag is not given (a text field: blank, the flag's default shown greyed)."""
        if self.kind == "switch":
            return "no"
        if self.kind == "choice":
            return "" if self.flag.default is None else str(self.flag.default)
        return ""

    @property
    def placeholder(self) -> str:
        d = self.flag.default
        return "not given" if d is None else f"default {d:g}" if isinstance(d, float) else f"default {d}"

    @property
    def parse(self) -> Callable[[str], object]:
        return _cli_parse(self.flag)


def _hand_made() -> set[str]:
    """Flags with a hand-made wizard field (the table's ``wizard_field``); the others get generated ones."""
    return {f.flag for f in FLAGS.values() if f.wizard_field}


def _advanced() -> dict[str, AdvancedField]:
    hand_made, out = _hand_made(), {}
    for section in SECTIONS:
        for flag in section.flags:
            if flag in hand_made or flag in CLI_ONLY or FLAGS[flag].dest in out:
                continue
            out[FLAGS[flag].dest] = AdvancedField(FLAGS[flag], section.id)
    return out


# Field id (the flag's dest) -> its generated field, in the flag table's order within each section.
ADVANCED: dict[str, AdvancedField] = _advanced()

# Field id -> the CLI flag it stands for (errors from the API name the flag; the wizard shows them at the field).
FIELD_FLAGS: dict[str, str] = {**WIZARD_FIELD_FLAGS, **{a.name: a.flag.flag for a in ADVANCED.values()}}
# Flag -> field; the catalogs' errors name the bare field ("model", "gpu"). A generated field takes its flag's errors.
_FLAG_FIELDS = {**FLAG_WIZARD_FIELDS, "model": "model", "gpu": "gpu",
                **{a.flag.flag: a.name for a in ADVANCED.values()}}


def field_for_flag(flag: str | None) -> str | None:
    """The wizard field an API error about ``flag`` belongs to (None: show it in the summary)."""
    return _FLAG_FIELDS.get(flag) if flag else None


@dataclass(frozen=True)
class WizardInputs:
    """Every field of the wizard as the user typed or picked it (text; blank means not given). The generated
    (Advanced) fields are in ``advanced``: (field id, text) pairs that differ from the flag's default, sorted."""

    model: str = ""
    gpu: str = ""                 # GPU catalog name; blank: give VRAM instead
    vram: str = ""                # GiB per GPU; blank: the GPU's memory
    gpus: str = "1"
    nodes: str = "1"
    cpu_ram: str = ""             # GiB per node; blank: not checked
    seq_len: str = ""             # tokens; blank: the smaller of 2048 and the model's context (as the CLI)
    micro_batch: str = "1"
    global_batch: str = ""
    method: str = "full"
    precision: str = AUTO
    optimizer: str = "adamw"
    checkpointing: str = AUTO
    lora_rank: str = "16"
    strategy: str = RECOMMENDED
    # issue 16 (helper I)
    task: str = "train"           # train | infer
    lora_targets: str = "all-linear"   # comma-separated module names, as --lora-targets
    double_quant: str = "yes"     # QLoRA: bitsandbytes double quantization (--no-double-quant is "no")
    loss: str = AUTO              # auto: as --loss not given
    attention: str = "sdpa"
    prompt_len: str = ""          # --task infer: prompt tokens of the sequence; blank: all
    framework: str = "accelerate"
    advanced: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        given = dict(self.advanced)
        unknown = set(given) - set(ADVANCED)
        if unknown:
            raise ValueError(f"not wizard fields: {', '.join(sorted(unknown))}")
        canonical = tuple(sorted((k, v) for k, v in given.items() if v != ADVANCED[k].default))
        object.__setattr__(self, "advanced", canonical)

    def get(self, name: str) -> str:
        """The text of any field, hand-made or generated."""
        if name in ADVANCED:
            return dict(self.advanced).get(name, ADVANCED[name].default)
        return getattr(self, name)

    def with_(self, **changes: str) -> WizardInputs:
        advanced = {k: v for k, v in changes.items() if k in ADVANCED}
        plain = {k: v for k, v in changes.items() if k not in ADVANCED}
        if advanced:
            plain["advanced"] = tuple({**dict(self.advanced), **advanced}.items())
        return replace(self, **plain)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every field id: the hand-made ones, then the generated ones."""
        return tuple(f.name for f in fields(cls) if f.name != "advanced") + tuple(ADVANCED)


assert not set(ADVANCED) & {f.name for f in fields(WizardInputs)}, "a generated field shadows a hand-made one"


# ---------------------------------------------------------------- which fields apply (session 10, helper R)
# A field applies to some tasks, methods, strategies or losses only: the spec ignores it otherwise (TrainingSpec reads
# its lora settings for lora/qlora, double_quant for qlora, freeze_trainable_layers for freeze; StrategySpec refuses
# offload on single/ddp, offload_param without sharded parameters, --sp without DeepSpeed, --cp / --dp-replicate /
# --fsdp-version without FSDP; ZeRO's buckets and sub_group_size exist under DeepSpeed only; nothing is gathered at
# a save on single/ddp/ZeRO-0..2: advisor/memory/checkpoint_save.py). The wizard hides a field that does not apply
# and evaluates its flag's default in its place (:func:`in_effect`), so a hidden value never reaches the spec, the
# command line or the files; the text stays, and comes back when the field applies again.
_ZERO = tuple(s for s in STRATEGIES if s.startswith("zero"))
_FSDP = tuple(s for s in STRATEGIES if s.startswith("fsdp-"))


def _train(v: "WizardInputs") -> bool:
    return v.task == "train"


def _methods(*methods: str) -> Callable[["WizardInputs"], bool]:
    """Training with one of ``methods`` (or ``auto``: the recommender may pick one of them)."""
    return lambda v: v.task == "train" and v.method in (*methods, AUTO)


def _strategies(*names: str, recommended: bool = False) -> Callable[["WizardInputs"], bool]:
    """Training under one of the strategies ``names`` picked (``recommended``: also while the recommender picks)."""
    return lambda v: v.task == "train" and (v.strategy in names or (recommended and v.strategy == RECOMMENDED))


APPLIES: dict[str, Callable[["WizardInputs"], bool]] = {
    # the task's own fields (inference: weights and KV cache, no optimizer, no strategy, no search knobs)
    **{name: _train for name in ("global_batch", "optimizer", "checkpointing", "strategy", "loss", "margin",
                                 "max_micro_batch", "offload_activations", "tiled_mlp", "torch_version",
                                 "transformers_version", "model_code")},
    "prompt_len": lambda v: v.task == "infer",
    # the method's details
    **{name: _methods("lora", "qlora") for name in ("lora_rank", "lora_targets", "lora_dropout", "base_dtype")},
    "double_quant": lambda v: v.method in ("qlora", AUTO),     # QLoRA's 4-bit weights, trained or served
    "qlora_quantizer": _methods("qlora"),
    "freeze_layers": _methods("freeze"),
    "loss_chunks": lambda v: v.task == "train" and v.loss == "chunked",
    # the strategy's (the recommender may pick a ZeRO-3 or FSDP layout: these then apply)
    "sync_each_batch": _strategies(*_FSDP, recommended=True),
    "checkpoint_save": _strategies("zero3", *_FSDP, recommended=True),
    "deepspeed_version": _strategies("zero3", recommended=True),   # ZeRO-3's parameter coordinator
    # the Advanced strategy and layout fields: a picked strategy's (estimate --strategy), never the recommender's
    "offload_optimizer": _strategies("zero1", "zero2", "zero3", "fsdp-full", "fsdp-hybrid"),
    "offload_param": _strategies("zero3", "fsdp-full", "fsdp-hybrid"),
    "bucket_sizes": _strategies(*_ZERO),
    "sub_group_size": _strategies("zero3"),
    "tp": _strategies(*_ZERO, *_FSDP),
    "allow_cross_node_tp": _strategies(*_ZERO, *_FSDP),
    "sp": _strategies(*_ZERO),
    **{name: _strategies(*_FSDP) for name in ("cp", "dp_replicate", "fsdp_version")},
}


def applies(name: str, inputs: "WizardInputs") -> bool:
    """Whether field ``name`` is used for these inputs (:data:`APPLIES`; a field without a rule always is)."""
    rule = APPLIES.get(name)
    return True if rule is None else rule(inputs)


def in_effect(inputs: "WizardInputs") -> "WizardInputs":
    """``inputs`` with every field that does not apply set back to its default: what is evaluated."""
    defaults = WizardInputs()
    reset = {name: defaults.get(name) for name in APPLIES
             if not applies(name, inputs) and inputs.get(name) != defaults.get(name)}
    return inputs.with_(**reset) if reset else inputs


def _optional(parse: Callable[[str], object]) -> Callable[[str], object]:
    def parse_optional(text: str) -> object:
        return None if not text.strip() else parse(text.strip())
    return parse_optional


# Field id -> parser of its text (the CLI's argparse types); a parser raises ValueError or ArgumentTypeError.
PARSERS: dict[str, Callable[[str], object]] = {
    "vram": _optional(gib), "gpus": positive_int, "nodes": positive_int, "cpu_ram": _optional(gib),
    "seq_len": _optional(positive_int), "micro_batch": positive_int, "global_batch": _optional(positive_int),
    "lora_rank": positive_int, "prompt_len": _optional(positive_int),
    "lora_targets": lambda text: lora_targets(text),
    **{a.name: a.parse for a in ADVANCED.values()},
}


def lora_targets(text: str) -> tuple[str, ...]:
    """The LoRA target modules from the field's text, split as the CLI splits --lora-targets."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise ValueError("give module names (q_proj,v_proj,...) or all-linear")
    return targets


def check_field(name: str, text: str) -> str | None:
    """The inline error for one field's text, or None when it parses (the CLI's own argument checks)."""
    parse = PARSERS.get(name)
    if parse is None:
        return None
    try:
        parse(text.strip())
    except (argparse.ArgumentTypeError, ValueError) as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class Parsed:
    """Typed values of the numeric and generated fields, plus the inline error of every field that did not parse."""

    values: dict[str, object]
    errors: dict[str, str]


def parse_inputs(inputs: WizardInputs) -> Parsed:
    """The typed values of the fields in effect (:func:`in_effect`): a hidden field neither counts nor errs."""
    inputs = in_effect(inputs)
    values: dict[str, object] = {}
    errors: dict[str, str] = {}
    for name, parse in PARSERS.items():
        text = inputs.get(name)
        try:
            values[name] = parse(text.strip())
        except (argparse.ArgumentTypeError, ValueError) as exc:
            errors[name] = str(exc)
    return Parsed(values, errors)


# ---------------------------------------------------------------- the same inputs as a command line

def cli_namespace(inputs: WizardInputs, values: dict[str, object], vram: float | None) -> argparse.Namespace:
    """The ``argparse.Namespace`` ``dsadvise estimate`` / ``recommend`` would parse from the flags these fields
    stand for (``values``: :func:`parse_inputs`' values; ``vram``: None when the GPU's own memory is meant).
    'auto' / 'recommended' are flags not given; a field that does not apply is its flag's default."""
    inputs = in_effect(inputs)
    infer = inputs.task == "infer"
    ns = dict(model=inputs.model.strip(), gpus=values["gpus"], nodes=values["nodes"], vram=vram,
              gpu=inputs.gpu or None, cpu_ram=values["cpu_ram"], task=inputs.task, seq_len=values["seq_len"],
              micro_batch=values["micro_batch"], global_batch=None if infer else values["global_batch"],
              precision=None if inputs.precision == AUTO else inputs.precision, optimizer=inputs.optimizer,
              method=inputs.method, lora_rank=values["lora_rank"], lora_targets=",".join(values["lora_targets"]),
              no_double_quant=inputs.double_quant == "no", loss=None if inputs.loss == AUTO else inputs.loss,
              attention=inputs.attention,
              checkpointing=None if inputs.checkpointing == AUTO or infer else inputs.checkpointing,
              strategy=None if inputs.strategy == RECOMMENDED or infer else inputs.strategy,
              prompt_len=values["prompt_len"] if infer else None, framework=inputs.framework)
    ns.update({name: values[name] for name in ADVANCED})
    return argparse.Namespace(**ns)


def fields_from_args(ns: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    """The field texts the flags ``names`` set in ``ns`` (parsed as ``dsadvise estimate`` / ``recommend`` parse
    them; None or False: not given, left out): the inverse of :func:`cli_namespace` for ``dsadvise wizard``'s
    start values."""
    out: dict[str, str] = {}
    for flag in names:
        value = getattr(ns, FLAGS[flag].dest, None)
        name = field_for_flag(flag)
        if value is None or value is False or name is None:
            continue
        if flag == "--no-double-quant":
            out["double_quant"] = "no"
        elif name in ADVANCED and ADVANCED[name].kind == "switch":
            out[name] = "yes"
        else:
            out[name] = _flag_text(value)
    return out


def _flag_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def command_line(ns: argparse.Namespace) -> str:
    """``dsadvise estimate ...`` (a strategy is given) or ``dsadvise recommend ...``: the command that computes
    what the wizard shows, with every flag of that command whose value differs from its default (the Advanced
    strategy and layout values apply to a picked strategy only, as in the wizard)."""
    import shlex

    # estimate: a picked strategy (and its layout flags), or --prompt-len, which only estimate takes
    estimate = ns.strategy is not None or (ns.task == "infer" and ns.prompt_len is not None)
    names = [*_flags.MODEL_FLAGS, *_flags.HARDWARE_FLAGS, *_flags.TRAINING_FLAGS]
    names += [*_flags.STRATEGY_FLAGS, *_flags.LAYOUT_FLAGS, *_flags.ESTIMATE_FLAGS] if estimate \
        else list(_flags.RECOMMEND_FLAGS)
    words = ["dsadvise", "estimate" if estimate else "recommend"]
    for name in dict.fromkeys(names):
        flag = FLAGS[name]
        if name in CLI_ONLY or not hasattr(ns, flag.dest):
            continue
        value = getattr(ns, flag.dest)
        if flag.action == "store_true":
            if value:
                words.append(name)
            continue
        if value is None or (value == flag.default and name != "--model"):
            continue
        words += [name, shlex.quote(_flag_text(value))]
    return " ".join(words)


def vram_text(gpu_name: str) -> str:
    """The VRAM field's text for a catalog GPU (GiB), as the GPU picker fills it in."""
    from ..catalog.gpus import resolve_gpu
    from ..specs import GiB

    return f"{resolve_gpu(gpu_name).memory_bytes / GiB:g}"
