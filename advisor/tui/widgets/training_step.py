"""Step 3: training or inference. The task, the method and its details (LoRA rank and targets, QLoRA double
quantization, loss kernel, attention), sequence length, batch, precision (auto by default) and, for training,
optionally a strategy. Fields that do not apply to the task, method, strategy or loss are hidden (form.APPLIES)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.widgets import Input, Select, Static

from ..form import (ATTENTION_CHOICES, CHECKPOINTING_CHOICES, DOUBLE_QUANT_CHOICES, LOSS_CHOICES, METHOD_CHOICES,
                    OPTIMIZER_CHOICES, PRECISION_CHOICES, STRATEGY_CHOICES, TASK_CHOICES, WizardInputs, applies)
from .advanced import AdvancedSection, advanced_sections
from .fields import Field, number_input

_LABELS = {
    "auto": "auto (let the advisor choose)", "recommended": "recommended (let the advisor choose)",
    "full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (4-bit base)",
    "freeze": "freeze all but the last layers",
    "none": "none", "bf16": "bf16 mixed", "fp16": "fp16 mixed", "fp32": "fp32", "pure-bf16": "pure bf16",
    "train": "train (fine-tune)", "infer": "inference (generate)",
    "plain": "plain (transformers)", "chunked": "chunked (torchtune)", "fused-linear": "fused linear (Liger / CCE)",
    "legacy-inline": "inline (transformers <= 4.45)", "trl-head": "TRL fused LM head",
    "sdpa": "sdpa (PyTorch)", "eager": "eager", "flash": "flash-attention 2",
    "yes": "yes (bitsandbytes default)", "no": "no",
}
_LOSS_LABELS = {"auto": "auto (as the CLI)"}
_INFER_LABELS = {"full": "16-bit weights", "qlora": "4-bit weights (NF4)"}

def _choice(name: str, values: tuple[str, ...], value: str) -> Select:
    labels = {**_LABELS, **_LOSS_LABELS} if name == "loss" else _LABELS
    return Select([(labels.get(v, v), v) for v in values], value=value, allow_blank=False, id=f"field-{name}")


class TrainingStep(VerticalScroll):
    """The training (or inference) fields; blanks and 'auto' leave the choice to the recommender."""

    can_focus = False    # Tab goes to the fields; they scroll into view

    def __init__(self, inputs: WizardInputs, **kwargs) -> None:
        super().__init__(**kwargs)
        self._v = inputs

    def compose(self) -> ComposeResult:
        v = self._v
        yield Static(self._title(v.task), classes="step-title", id="training-title")
        with Grid(classes="fields"):
            yield Field("task", "Task", _choice("task", TASK_CHOICES, v.task),
                        hint="inference: weights + KV cache, two launch layouts")
            yield Field("method", "Method", _choice("method", METHOD_CHOICES, v.method))
            yield Field("precision", "Precision", _choice("precision", PRECISION_CHOICES, v.precision),
                        hint="auto: bf16 where the GPU has it, else fp16")
            yield Field("seq_len", "Sequence length (tokens)", number_input("seq_len", v.seq_len, "auto"),
                        hint="auto: min(2048, model context)")
            yield Field("prompt_len", "Prompt tokens", number_input("prompt_len", v.prompt_len, "all"),
                        hint="of the sequence; the rest is generated")
            yield Field("micro_batch", "Micro-batch per GPU", number_input("micro_batch", v.micro_batch),
                        hint="the smallest the advisor may use")
            yield Field("global_batch", "Global batch (samples/step)",
                        number_input("global_batch", v.global_batch, "optional"))
            yield Field("optimizer", "Optimizer", _choice("optimizer", OPTIMIZER_CHOICES, v.optimizer))
            yield Field("checkpointing", "Activation checkpointing",
                        _choice("checkpointing", CHECKPOINTING_CHOICES, v.checkpointing))
            yield Field("lora_rank", "LoRA rank", number_input("lora_rank", v.lora_rank),
                        hint="used by LoRA and QLoRA")
            yield Field("lora_targets", "LoRA target modules",
                        Input(v.lora_targets, placeholder="all-linear", id="field-lora_targets"),
                        hint="all-linear, or q_proj,v_proj,...")
            yield Field("double_quant", "QLoRA double quantization",
                        _choice("double_quant", DOUBLE_QUANT_CHOICES, v.double_quant),
                        hint="quantizes the 4-bit scales too")
            yield Field("loss", "Loss kernel", _choice("loss", LOSS_CHOICES, v.loss),
                        hint="auto: plain, or inline under transformers < 4.46")
            yield Field("attention", "Attention", _choice("attention", ATTENTION_CHOICES, v.attention))
            yield Field("strategy", "Strategy", _choice("strategy", STRATEGY_CHOICES, v.strategy),
                        hint="pick one to see its estimate instead")
        yield from advanced_sections("training", v)

    def on_mount(self) -> None:
        self.show_for(self._v)

    @staticmethod
    def _title(task: str) -> str:
        return "How will you serve it?" if task == "infer" else "How will you train it?"

    def update_titles(self, inputs: WizardInputs) -> None:
        """The Advanced sections' titles count what is set."""
        for section in self.query(AdvancedSection):
            section.update_title(inputs)

    def show_for(self, inputs: WizardInputs) -> None:
        """Show the fields that apply to ``inputs`` (advisor/tui/form.py ``APPLIES``: task, method, strategy, loss),
        hide the others, and an Advanced section none of whose fields applies."""
        for row in self.query(Field):
            row.display = applies(row.field_name, inputs)
        for section in self.query(AdvancedSection):
            section.display = section.applies(inputs)
        self.update_titles(inputs)
        self.query_one("#training-title", Static).update(self._title(inputs.task))
