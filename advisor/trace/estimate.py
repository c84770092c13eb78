"""The estimator's side of a trace: an Architecture for a traced config, its parameter counts and its
activation figures in the shapes :mod:`advisor.memory` consumes (bytes; element counts for parameters)."""

from __future__ import annotations

import json

from advisor.architecture import Architecture
from advisor.specs import TrainingSpec
from advisor.trace.result import TraceSettings


def traced_architecture(cfg: dict, source: str = "config.json") -> tuple[Architecture, str]:
    """An Architecture marked ``traced`` (shape facts read from the transformers config) and its class name."""
    from advisor.trace.tracer import describe

    facts = describe(cfg, source)
    arch_class = facts.pop("arch_class")
    arch = Architecture(family=str(cfg["model_type"]), traced=True,
                        source_config=json.dumps(cfg, sort_keys=True, default=str), **facts)
    return arch, arch_class


def config_at_depth(arch: Architecture) -> dict:
    """The HF config of ``arch`` with its layer count set to ``arch.num_layers`` (a copy may have changed it)."""
    cfg = json.loads(arch.source_config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg or key == "num_hidden_layers":
            cfg[key] = arch.num_layers
    return cfg


def trace_settings(training: TrainingSpec, mode: str) -> tuple[TraceSettings, list[str]]:
    """The trace settings for a training spec, and what had to be approximated (said to the user)."""
    notes: list[str] = []
    attention = training.attention
    if attention == "flash":
        attention = "sdpa"
        notes.append("flash attention traced as SDPA's flash kernel (same saved set)")
    ckpt = training.activation_checkpointing
    if ckpt == "selective":
        if attention == "eager":
            notes.append("selective checkpointing traced without checkpointing (an upper bound)")
        ckpt = "none"
    method = training.method
    if method == "qlora":
        method = "lora"
        notes.append("QLoRA traced as LoRA over a 16-bit base (an upper bound)")
    if method == "freeze":
        method = "full"
        notes.append("freeze tuning traced as full fine-tuning (an upper bound)")
    targets = tuple(training.lora.target_modules) if isinstance(training.lora.target_modules, (list, tuple)) \
        else (training.lora.target_modules,)
    return TraceSettings(seq_len=training.seq_len, batch=training.micro_batch_size, mode=mode, attention=attention,
                         checkpointing=ckpt, method=method, lora_rank=training.lora.rank,
                         lora_targets=targets,
                         lora_dropout=training.lora.dropout if method == "lora" else 0.0), notes


def traced_activation_terms(arch: Architecture, training: TrainingSpec, mode: str) -> tuple[int, int, dict[str, int]]:
    """(activations, temporaries, breakdown) in bytes of a traced architecture, in the shape of
    :class:`advisor.memory.activations.ActivationEstimate` (built there: no import cycle)."""
    from advisor.trace.tracer import trace_model

    if arch.source_config is None:
        raise ValueError(f"{arch.family}: no config to trace (an Architecture built without one)")
    settings, _ = trace_settings(training, mode)
    r = trace_model(config_at_depth(arch), settings)
    # (r.attention may be "eager" where transformers has no SDPA path for the family: that is what runs)
    layers = sum(r.saved_per_layer)
    breakdown = {
        "outside_layers": r.saved_fixed,      # embeddings, rotary tables, final norm, logits and loss
        "per_layer": max(r.saved_per_layer, default=0),
        "layers": layers,
        "temp:logits_and_loss_backward": r.temporaries,
        "temp:layer_backward": r.temporaries,
        "info:logits_output_held": r.logits_held,
        # conservative: the bottom layer's backward also sees what lives outside the layers
        "info:layer_transient": r.temporaries + r.saved_fixed,
    }
    if r.weight_copies:
        breakdown["info:autocast_weight_copies"] = r.weight_copies
    return r.activations, r.temporaries, breakdown


def traced_counts(arch: Architecture) -> dict[str, int]:
    """The fields of :class:`advisor.param_count.ParameterCounts` for a traced architecture (element counts;
    hybrid layers: ``per_layer`` is the largest layer)."""
    from advisor.trace.tracer import trace_parameters

    p = trace_parameters(config_at_depth(arch))
    per_layer = max(p.per_layer, default=0)
    return dict(total=p.total, embedding=p.embedding, lm_head=p.lm_head, per_layer=per_layer, final=0,
                active_per_token=p.active_per_token, largest_module=p.largest_module, layer_gathered=per_layer)


def traced_lora_trainable(arch: Architecture, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA adapter elements PEFT adds to the traced model (meta build)."""
    from advisor.trace.tracer import trace_parameters

    settings = TraceSettings(seq_len=1, method="lora", lora_rank=rank, lora_targets=tuple(targets))
    return trace_parameters(config_at_depth(arch), settings).trainable
