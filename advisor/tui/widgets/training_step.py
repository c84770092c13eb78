"""Step 3: training. Method, sequence length, batch, precision (auto by default) and, optionally, a strategy."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.widgets import Select, Static

from ..form import (CHECKPOINTING_CHOICES, METHOD_CHOICES, OPTIMIZER_CHOICES, PRECISION_CHOICES, STRATEGY_CHOICES,
                    WizardInputs)
from .fields import Field, number_input

_LABELS = {
    "auto": "auto (let the advisor choose)", "recommended": "recommended (let the advisor choose)",
    "full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (4-bit base)",
    "freeze": "freeze all but the last layers",
    "none": "none", "bf16": "bf16 mixed", "fp16": "fp16 mixed", "fp32": "fp32", "pure-bf16": "pure bf16",
}


def _choice(name: str, values: tuple[str, ...], value: str) -> Select:
    return Select([(_LABELS.get(v, v), v) for v in values], value=value, allow_blank=False, id=f"field-{name}")


class TrainingStep(VerticalScroll):
    """The training fields; blanks and 'auto' leave the choice to the recommender."""

    can_focus = False    # Tab goes to the fields; they scroll into view

    def __init__(self, inputs: WizardInputs, **kwargs) -> None:
        super().__init__(**kwargs)
        self._v = inputs

    def compose(self) -> ComposeResult:
        v = self._v
        yield Static("How will you train it?", classes="step-title")
        with Grid(classes="fields"):
            yield Field("method", "Method", _choice("method", METHOD_CHOICES, v.method))
            yield Field("precision", "Precision", _choice("precision", PRECISION_CHOICES, v.precision),
                        hint="auto: bf16 where the GPU has it, else fp16")
            yield Field("seq_len", "Sequence length (tokens)", number_input("seq_len", v.seq_len, "auto"),
                        hint="auto: min(2048, model context)")
            yield Field("micro_batch", "Micro-batch per GPU", number_input("micro_batch", v.micro_batch),
                        hint="the smallest the advisor may use")
            yield Field("global_batch", "Global batch (samples/step)",
                        number_input("global_batch", v.global_batch, "optional"))
            yield Field("optimizer", "Optimizer", _choice("optimizer", OPTIMIZER_CHOICES, v.optimizer))
            yield Field("checkpointing", "Activation checkpointing",
                        _choice("checkpointing", CHECKPOINTING_CHOICES, v.checkpointing))
            yield Field("lora_rank", "LoRA rank", number_input("lora_rank", v.lora_rank),
                        hint="used by LoRA and QLoRA")
            yield Field("strategy", "Strategy", _choice("strategy", STRATEGY_CHOICES, v.strategy),
                        hint="pick one to see its estimate instead")
