"""Activation memory from what each transformer block really saves for backward.

Instead of one textbook formula, this module *replays* the forward pass of the Hugging Face
``transformers`` (v5) implementation of the model's family on symbolic tensors: each tensor carries an
element count, a dtype, a ``requires_grad`` flag and a storage id. Every op applies PyTorch autograd's own
rule for what it saves (``tools/autograd/derivatives.yaml``: ``mm`` saves ``self`` only when the weight needs
a gradient, ``softmax`` saves its result, ``silu`` its input, ...), the dtype rules of the compute mode (CUDA
autocast's op lists from ``aten/src/ATen/autocast_mode.cpp``, type promotion, the explicit ``.float()``
upcasts of the HF code) and the storage aliasing that decides whether two saved tensors share memory (a view
of a fused QKV projection keeps the whole projection alive). Saved storages are counted once.

Nothing is fitted: every byte comes from a tensor the HF module creates. ``benchmarks/harness/kinds/saved.py`` records
the same quantity on real models with ``torch.autograd.graph.saved_tensors_hooks`` and
``benchmarks/accuracy.py`` compares the two (see ``docs/accuracy.md``).

Pure arithmetic: no torch, no transformers (the CLI must start fast).

Where things live: the symbolic tensor and its table of save rules in :mod:`advisor.memory.symbolic`; the
backward replay in :mod:`advisor.memory.backward`; the decoder forward all families share in
:mod:`advisor.families.replay` and each family's differences in its own module under :mod:`advisor.families`;
here, the whole-model assembly (layers, checkpointing, extrapolation to depth, allocation sequences) and the
public entry points (:func:`activation_memory`, :func:`allocation_trace`, :func:`allocation_key`).

Conventions
-----------
* ``activations``: bytes autograd holds after the forward of one micro-batch (per GPU). Parameters and
  anything aliasing them are excluded. Under autocast over fp32 weights, the low-precision weight copies that
  linears save are *not* activations; they are reported as ``breakdown["info:autocast_weight_copies"]``
  (they scale with parameters, not tokens).
* ``temporaries``: the transient peak on top of ``activations`` during backward. The trace also records the
  autograd node each op creates, and ``_replay_backward`` runs them the way autograd's engine does
  (descending sequence number): each node allocates its inputs' gradients (or hands on / views the incoming
  one), plus the temporaries its formula allocates; it then releases its saved tensors (a storage dies with
  the last node that saved it) and its incoming gradient; a second gradient arriving at a tensor is
  accumulated in place or out of place by ``InputBuffer``'s rule; a checkpointed region (full or selective)
  rebuilds its saved set when its first node unpacks one. ``temporaries`` is the larger of two moments: the
  loss and final-norm backward (two fp32 N x V gradients while everything is saved) and the backward of the
  last decoder layer (the first to run), each including the logits tensor the caller's output still holds,
  plus QLoRA's dequantized weight. Parameter gradients are model states, counted elsewhere. Validated
  against the CPU allocator in ``docs/accuracy.md`` (fp32); half-precision modes apply the same accounting
  with their dtype sizes (not measurable on a CPU without fast 16-bit GEMM). Kernel-internal workspaces of
  fused attention backwards (SDPA/flash) are not modeled.
* ``breakdown``: named byte terms. ``embeddings + rope_cache + layers + final_norm + logits_and_loss
  (+ attention_mask)`` sum to ``activations``; ``per_layer`` is one decoder layer (``layers`` = the first
  layer + the rest; the first may differ when its input needs no gradient); ``temp:*`` terms are the
  moments whose maximum is ``temporaries`` (bytes above the whole end-of-forward activations level, held
  logits included); ``info:*`` terms are in neither sum (the logits tensor held by the caller, already inside
  ``temp:*``; ``info:layer_transient``, one decoder layer's backward peak above what is still saved at that
  moment, for placing it at any layer; autocast's low-precision weight copies, which scale with parameters,
  for the model-state side).
* flash attention (flash-attn 2, GPU only) is accounted like PyTorch SDPA's flash kernel: q, k, v, the output
  and the fp32 logsumexp are saved (plus an RNG state of a few bytes); it needs no mask for sliding windows.
* SDPA attention dropout costs nothing: the fused kernels regenerate the mask from the Philox seed.
* checkpointing ``full``: transformers' ``gradient_checkpointing_enable`` (non-reentrant) keeps each decoder
  layer's input only. ``selective``: the core attention (QKᵀ, soft-capping, softmax, dropout, ·V) is
  recomputed, Megatron-LM style (Korthikanti et al. 2022): under eager attention the attention interface call
  is checkpointed, so its inputs (q, k, v after RoPE, in their dtype there) are kept and the b·h·s² tensors
  are not; with SDPA/flash nothing quadratic is saved, so ``selective`` equals ``none``.
* LoRA follows ``peft.tuners.lora.Linear.forward``: adapters in fp32 (``autocast_adapter_dtype=True``), the
  input cast to the adapter dtype before ``lora_A``, no LoRA dropout. QLoRA is LoRA over a 4-bit base whose
  ``MatMul4Bit`` saves its input whenever that input requires grad (bitsandbytes autograd/_functions.py) and
  dequantizes one weight at a time (a temporary).
  ``freeze``: only the last ``freeze_trainable_layers`` decoder layers train.
"""


from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from advisor.architecture import Architecture
from advisor.datacache import computed
from advisor.families import REPLAYED_FAMILIES
from advisor.specs import TrainingSpec

# The replay's pieces (re-exported: benchmarks and tests reach them through this module):
from .backward import _Buf, _replay_backward  # noqa: F401
from .symbolic import _BYTES, ComputeMode, _Node, _promote, _T, _Trace  # noqa: F401


def compute_mode(precision: str, backend: str) -> ComputeMode:
    """How the forward computes: DeepSpeed fp16/bf16 casts the model itself to half (``half-*``); single,
    DDP and FSDP with fp16/bf16 run torch autocast over fp32 weights (accelerate's ``mixed_precision``);
    ``pure-bf16`` is a bf16 model everywhere; ``fp32`` is fp32."""
    if precision == "fp32":
        return "fp32"
    if precision == "pure-bf16":
        return "half-bf16"
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"unknown precision {precision!r}")
    kind = "half" if backend == "deepspeed" else "autocast"
    return f"{kind}-{precision}"  # type: ignore[return-value]


class ActivationEstimate(BaseModel):
    """Activation bytes of one micro-batch on one GPU (see the module docstring for the conventions)."""

    model_config = ConfigDict(frozen=True)

    activations: int
    temporaries: int
    breakdown: dict[str, int]



def _Model(arch: Architecture, training: TrainingSpec, tr: _Trace, layer_trainable: bool):
    """The forward replay of ``arch``'s family (its module's ``FAMILY.replay``, advisor/families)."""
    from advisor.families import REPLAYED_FAMILIES, family

    if getattr(training, "model_code", "transformers") == "litgpt":   # issue 17 (G): litgpt's own GPT
        from advisor.families.litgpt_replay import LitgptReplay

        return LitgptReplay(arch, training, tr, layer_trainable)
    if arch.family in REPLAYED_FAMILIES:
        replay = family(arch.family).replay
    else:
        # A traced model (Falcon, BLOOM, or any model_type outside the registry): its bytes come from the
        # tracer, but the allocator model still needs an allocation sequence of the same shapes. The stand-in
        # is the registry's generic decoder with the same block layout: GPT-NeoX's replay for a parallel
        # residual (as the pre-registry Falcon/BLOOM replay was), Llama's otherwise. Only allocator.py gets here.
        replay = family("gpt_neox" if arch.parallel_residual else "llama").replay
    return replay(arch, training, tr, layer_trainable)


# ---------------------------------------------------------------------------------------------------------
# Whole-model assembly
# ---------------------------------------------------------------------------------------------------------
def _saving_layers(arch: Architecture, training: TrainingSpec, ckpt: str) -> int:
    """Decoder layers that save tensors. Under ``freeze`` without checkpointing the frozen layers in front
    save nothing (no tensor there needs a gradient); with full checkpointing every layer keeps its input,
    which requires grad (enable_input_require_grads)."""
    if training.method == "freeze" and ckpt != "full":
        return min(training.freeze_trainable_layers, arch.num_layers)
    return arch.num_layers


def _checkpointed_layer(tr, m, x, term: str):
    """One layer under full activation checkpointing: checkpoint() keeps the layer input (NoopSaveInputs);
    what the layer saves inside is dropped after the forward and rebuilt during its backward (recorded in
    ``m.recompute``). Returns the layer's output."""
    tr.term = term + ":inner"
    before = set(tr.saved)
    out = m.layer(x, False)
    inner = [sid for sid in tr.saved if sid not in before]
    m.recompute.append((term + ":inner", inner))
    for sid in inner:
        del tr.saved[sid]
    tr.term = term
    tr.save(x)
    tr._take()                                                         # released by the layer's own nodes
    return tr.op(tr.new(out.n, out.dt, out.rg), [out], "alias")


def _layer_plan(arch: Architecture, training: TrainingSpec, ckpt: str) -> list[tuple[str, str]]:
    """(term, layer kind) of the decoder layers :func:`_trace_model` replays: ``first_layer`` (the first layer
    that saves: its input may need no gradient) and ``per_layer`` (a layer of the model's last kind at index
    >= 1: the first layer backward runs); with a ``layer_pattern``, one ``per_layer@<kind>`` in between for
    every other kind among the saving layers, so each kind's cost at index >= 1 is known."""
    if not arch.hybrid:
        return [("first_layer", ""), ("per_layer", "")]
    kinds = arch.layer_kinds
    saving = kinds[arch.num_layers - _saving_layers(arch, training, ckpt):]
    others = [k for k in dict.fromkeys(saving[1:]) if k != kinds[-1]]
    return [("first_layer", saving[0]), *((f"per_layer@{k}", k) for k in others), ("per_layer", kinds[-1])]


def _trace_model(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str) -> dict[str, int]:
    """Byte terms of one micro-batch: embeddings, first_layer, per_layer, final_norm, logits_and_loss, ..."""
    b, s = training.micro_batch_size, training.seq_len
    tr = _Trace(mode, b, s)
    full = training.method == "full"
    freeze = training.method == "freeze"
    selective = ckpt == "selective"
    # Frozen layers in front of the first trainable one save nothing: no tensor there needs a gradient.
    m = _Model(arch, training, tr, layer_trainable=full or freeze)
    tr.term = "embeddings"
    emb = m.embeddings(emb_trainable=full, input_grads=ckpt == "full")   # issue 17 (C): the hook's output
    tr.term = "rope_cache"
    m.make_rope_cache()
    if ckpt == "full":
        # gradient_checkpointing_enable() calls enable_input_require_grads() for input_ids models (as PEFT
        # does): the embedding output requires grad even when the embeddings are frozen
        emb = _T(emb.n, emb.dt, True, emb.sid)
    elif freeze:
        emb = _T(emb.n, emb.dt, False, emb.sid)                        # output of frozen layers: no grad
    emb.p = emb.rg                                                     # the backward replay's target

    terms: dict[str, int] = {}
    x = emb
    plan = _layer_plan(arch, training, ckpt)
    for term, kind in plan:
        m.enter(kind)
        copies_before = tr.weight_copy_elems
        if ckpt == "full":
            x = _checkpointed_layer(tr, m, x, term)
        else:
            tr.term = term
            x = m.layer(x, selective)
        if arch.hybrid:   # autocast weight copies of one layer of this kind (issue 14: Llama-4's differ)
            terms.setdefault(f"copies:{kind}", tr.weight_copy_elems - copies_before)
            if term != "first_layer":
                terms[f"copies:{kind}"] = tr.weight_copy_elems - copies_before
    if ckpt == "full" and m.rope_cos is not None:
        tr.save(*m.rope_storages())                                    # alive in the layers' kwargs
    for term, kind in plan:
        terms[term] = tr.bytes_of(term)
        if arch.hybrid and term != "first_layer":
            terms[f"kind:{kind}"] = terms[term]                        # one layer of this kind at index >= 1
    weight_copy_layer = tr.weight_copy_elems // 2
    tr.weight_copy_elems = 0

    final_trainable = full
    lm_trainable = full
    held, loss = m.head(x, final_trainable, lm_trainable)
    weight_copy_head = tr.weight_copy_elems

    for term in ("embeddings", "rope_cache", "final_norm", "logits_and_loss"):
        terms[term] = tr.bytes_of(term)
    held_more = getattr(m, "held_more", [])                            # issue 17 (G): litgpt's list of chunk logits
    terms["logits_held"] = (tr.size[held.sid] if held is not None else 0) + sum(tr.size[sid] for sid in held_more)
    # issue 17 (G): bitsandbytes 0.42 ctx.tensors of the previous micro-step's graph, alive through this forward
    prev: dict[int, str] = {}
    for term, sid in getattr(m, "prev_graph_inputs", []):
        prev.setdefault(sid, term)
    for term in ("first_layer", "per_layer", "logits_and_loss"):
        terms[f"previous_graph:{term}"] = sum(tr.size[sid] for sid, t in prev.items() if t == term)
    # the end of the forward: tensors alive only until then (torchtune's logits list, Liger's chunk logits)
    terms["forward_end"] = max(sum(tr.size[sid] for sid in m.forward_held) + getattr(m, "forward_transient", 0),
                               getattr(m, "forward_moment", 0))   # issue 17: a LoRA'd head's forward moment
    # backward replay: the caller's output holds the logits; the first layer's input is the replay's end
    kept = {emb.sid, *held_more} | ({held.sid} if held is not None else set())
    peaks = _replay_backward(tr, loss, kept, m.recompute)
    none = (0, 0)
    head = [peaks.get(k, none) for k in ("final_norm", "logits_and_loss")]
    terms["bw_head"] = max(p[0] for p in head)
    terms["bw_layer"], terms["bw_layer_transient"] = peaks.get("per_layer", none)
    terms["weight_copy_layer"] = weight_copy_layer
    terms["weight_copy_head"] = weight_copy_head
    return terms


def _trace_events(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str,
                  layers: int, return_sections: bool = False):
    """The allocation sequence of one forward and backward of ``layers`` decoder layers (for the allocator
    model, advisor/memory/allocator.py): ``("a", key, bytes)`` when an op creates a tensor, ``("f", key, 0)``
    after the last op that reads a tensor nobody saved (or when backward releases a saved one), and
    ``("t", term, 0)`` where backward enters ``L<i>`` (decoder layer i), ``final_norm`` or
    ``logits_and_loss``. ``("m", "forward_end", 0)`` separates forward and backward; ``("h", key, 0)``, last,
    names the logits the caller holds (never freed here). Parameters are not in it (model states)."""
    b, s = training.micro_batch_size, training.seq_len
    tr = _Trace(mode, b, s)
    tr.events = []
    full = training.method == "full"
    freeze = training.method == "freeze"
    m = _Model(arch, training, tr, layer_trainable=full or freeze)
    tr.term = "embeddings"
    emb = m.embeddings(emb_trainable=full, input_grads=ckpt == "full")   # issue 17 (C): the hook's output
    tr.term = "rope_cache"
    m.make_rope_cache(tuple(arch.layer_kind(i) for i in range(layers)))
    if ckpt == "full":
        emb = _T(emb.n, emb.dt, True, emb.sid)
    elif freeze:
        emb = _T(emb.n, emb.dt, False, emb.sid)
    emb.p = emb.rg
    x = emb
    for i in range(layers):
        term = f"L{i}"
        m.enter(arch.layer_kind(i))
        if ckpt == "full":
            x = _checkpointed_layer(tr, m, x, term)
        else:
            tr.term = term
            x = m.layer(x, ckpt == "selective")
    if ckpt == "full" and m.rope_cos is not None:
        tr.save(*m.rope_storages())
    held, loss = m.head(x, full, full)
    fwd, fwd_terms = tr.events, tr.event_terms
    tr.events = None
    kept = {emb.sid, loss.sid, *m.forward_held, *getattr(m, "held_more", [])} | ({held.sid} if held is not None else set())
    # a tensor nobody saved dies after the last op that read it (at once if none did)
    frees: dict[int, list[int]] = {}
    for pos, (_, sid, _) in enumerate(fwd):
        if sid not in tr.saved and sid not in kept and sid not in tr.params:
            frees.setdefault(max(tr.last_use.get(sid, pos + 1), pos + 1), []).append(sid)
    events: list[tuple[str, object, int]] = []
    sections: list[int] = []                   # decoder layer of each event (-1 before, 1 << 20 after them)

    def section(term: str) -> int:
        head = term.split("|")[0].split(":")[0]
        if head[:1] == "L" and head[1:].isdigit():
            return int(head[1:])
        return -1 if head in ("embeddings", "rope_cache") else 1 << 20

    for pos, ev in enumerate(fwd):
        for sid in frees.get(pos, ()):
            events.append(("f", sid, 0))
            sections.append(section(fwd_terms[pos - 1]))
        events.append(ev)
        sections.append(section(fwd_terms[pos]))
    for sid in frees.get(len(fwd), ()):
        events.append(("f", sid, 0))
        sections.append(section(fwd_terms[-1]))
    for sid in m.forward_held:                                         # `del logits` before backward
        if sid not in tr.saved:
            events.append(("f", sid, 0))
            sections.append(1 << 20)
    events.append(("m", "forward_end", 0))
    sections.append(1 << 20)
    log: list[tuple[str, object, int]] = []
    _replay_backward(tr, loss, {emb.sid, *getattr(m, "held_more", [])} | ({held.sid} if held is not None else set()),
                     m.recompute, log)
    sec = 1 << 20
    for ev in log:
        if ev[0] == "t":
            sec = section(ev[1])
        events.append(ev)
        sections.append(sec)
    if held is not None:
        events.append(("h", held.sid, 0))                              # the logits the caller holds
        sections.append(-1)
    if return_sections:
        return events, sections
    return events


def allocation_key(arch: Architecture, training: TrainingSpec) -> tuple[TrainingSpec, str]:
    """The trace key and checkpointing mode :func:`activation_memory` traces for ``training``."""
    ckpt = training.activation_checkpointing
    if (arch.attn_logit_softcapping or arch.attention_sinks) and training.attention == "sdpa":
        training = training.model_copy(update={"attention": "eager"})
    if training.attention in ("sdpa", "flash") and ckpt == "selective":
        ckpt = "none"
    return _trace_key(training), ckpt


@lru_cache(maxsize=256)
def allocation_trace(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str,
                     layers: int) -> list[tuple[str, object, int]]:
    """:func:`_trace_events` of ``layers`` decoder layers, cached (callers must not mutate it). Deeper than
    5 layers, the sequence is built from a 4-layer trace by repeating its third layer
    (:func:`_replicate_layers`); tests/memory/test_allocator.py checks it equals the direct trace. Layers of
    several kinds (``layer_pattern``) are traced directly."""
    if layers <= 5 or arch.hybrid:
        return _trace_events(arch, training, mode, ckpt, layers)
    events, sections = _four_layer_trace(arch, training, mode, ckpt)
    out = _replicate_layers(events, sections, layers)
    return out if out is not None else _trace_events(arch, training, mode, ckpt, layers)


@lru_cache(maxsize=128)
def _four_layer_trace(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str):
    return _trace_events(arch, training, mode, ckpt, 4, return_sections=True)


def _replicate_layers(events: list, sections: list[int], layers: int) -> list | None:
    """An n-layer allocation sequence from a 4-layer one: layers 0, 1 and 3 as traced (3 becomes n-1), layer 2
    repeated for layers 2..n-2 with its own tensors renamed per copy. A copy's references to the previous
    layer's tensors go to the previous copy's matching tensors (matched in order of first reference: layer 2
    reading layer 1's against layer 3 reading layer 2's), and likewise for the gradients backward receives
    from the next layer. None when the matching fails (the caller then traces all layers)."""
    owner: dict = {}
    for (op, key, _), sec in zip(events, sections):
        if op == "a":
            owner.setdefault(key, []).append(sec)

    def refs(in_sec: int, of_sec: int) -> list:
        seen: dict = {}
        for (op, key, _), sec in zip(events, sections):
            if sec == in_sec and op in ("a", "f") and owner.get(key, [None])[0] == of_sec:
                seen.setdefault(key, None)
        return list(seen)

    prev_in, prev_out = refs(2, 1), refs(3, 2)        # layer 1's tensors read by 2 <-> 2's read by 3
    next_in, next_out = refs(2, 3), refs(1, 2)        # layer 3's gradients read by 2 <-> 2's read by 1
    if len(prev_in) != len(prev_out) or len(next_in) != len(next_out) \
            or any(len(set(v)) > 1 for v in owner.values()):
        return None
    prev_map = dict(zip(prev_in, prev_out))
    next_map = dict(zip(next_in, next_out))
    last = layers - 2                                  # the last copy of layer 2

    def rename(key, sec: int, copy: int):
        """Key of ``key`` as seen from copy ``copy`` of layer 2 (sec is the owner's section)."""
        if sec == 2:
            return key if copy == 2 else ("c", copy, key)
        if sec == 1 and copy > 2 and key in prev_map:            # the previous copy's matching tensor
            return prev_map[key] if copy == 3 else ("c", copy - 1, prev_map[key])
        if sec == 3 and copy < last and key in next_map:         # the next copy's matching gradient
            return ("c", copy + 1, next_map[key])
        return key

    def emit(out: list, idx: list[int], copy: int | None, layer_name: int | None) -> None:
        for i in idx:
            op, key, n = events[i]
            if op == "t" and layer_name is not None:
                out.append(("t", f"L{layer_name}", 0))
                continue
            if op in ("a", "f") and key in owner:
                osec = owner[key][0]
                if copy is not None:
                    key = rename(key, osec, copy)
                elif osec == 2:                        # layers 1 and 3 see the first / last copy
                    key = rename(key, 2, 2 if sections[i] <= 1 else last)
            out.append((op, key, n))

    fwd_end = next(i for i, (op, _, _) in enumerate(events) if op == "m")
    by_sec_f: dict[int, list[int]] = {}
    by_sec_b: dict[int, list[int]] = {}
    for i, sec in enumerate(sections):
        (by_sec_f if i <= fwd_end else by_sec_b).setdefault(sec, []).append(i)
    order_f = sorted(by_sec_f)
    if [s for s in order_f if 0 <= s < (1 << 20)] != [0, 1, 2, 3]:
        return None
    # sections must be contiguous runs for the splice to keep the order
    for group in (by_sec_f, by_sec_b):
        for idx in group.values():
            if idx[-1] - idx[0] + 1 != len(idx):
                return None
    out: list = []
    for sec in order_f:
        if sec == 2:
            for c in range(2, last + 1):
                emit(out, by_sec_f[2], c, None)
        elif sec == 3:
            emit(out, by_sec_f[3], None, None)
        else:
            emit(out, by_sec_f[sec], None, None)
    for sec in sorted(by_sec_b, key=lambda s: -s):
        if sec == 2:
            for c in range(last, 1, -1):
                emit(out, by_sec_b[2], c, c)
        elif sec == 3:
            emit(out, by_sec_b[3], None, layers - 1)
        else:
            emit(out, by_sec_b[sec], None, None)
    return out


def _trace_key(training: TrainingSpec) -> TrainingSpec:
    """``training`` with the fields the trace does not read set to their defaults (a cache key)."""
    return TrainingSpec(seq_len=training.seq_len, micro_batch_size=training.micro_batch_size,
                        method=training.method, lora=training.lora, attention=training.attention,
                        freeze_trainable_layers=training.freeze_trainable_layers,
                        activation_checkpointing=training.activation_checkpointing,
                        loss=training.loss, loss_chunks=training.loss_chunks,
                        qlora_quantizer=training.qlora_quantizer,   # issue 17 (L)
                        model_code=training.model_code,             # issue 17 (G)
                        # issue 17: the replay follows the stack (helper T: the adapters' dtype, replay lora_branch;
                        # session 9 A: SDPA's repeat_kv, per-layer rotary tables, mask copies; advisor/data/stacks.yaml)
                        transformers_version=training.transformers_version)


@lru_cache(maxsize=4096)
@computed("replay", dict, dict)             # kept across runs (advisor/datacache.py)
def _traced(arch: Architecture, training: TrainingSpec, mode: ComputeMode, ckpt: str) -> dict[str, int]:
    """Cached :func:`_trace_model` (the recommender asks for the same micro-batch under many strategies;
    one trace with its backward replay costs milliseconds). Callers must not mutate the returned dict."""
    return _trace_model(arch, training, mode, ckpt)


# Families whose forward is replayed (their module's FAMILY.replay, advisor/families; each checked against the
# tracer by tests/trace/test_catalog_agreement.py and the harness in docs/accuracy.md); any other family is traced
# on the real transformers model (advisor/trace). REPLAYED_FAMILIES (imported above) asks each family module.


def _replay_covers(arch: Architecture, training: TrainingSpec) -> bool:
    """False where the family's replay declines this run (``Family.replay_covers``, e.g. DeepSeek LoRA on experts)."""
    from advisor.families import family

    covers = family(arch.family).replay_covers
    return covers is None or covers(arch, training)


def activation_memory(arch: Architecture, training: TrainingSpec, mode: ComputeMode) -> ActivationEstimate:
    """Saved-for-backward bytes of one micro-batch and the backward transient peak on top (per GPU)."""
    litgpt = getattr(training, "model_code", "transformers") == "litgpt"   # issue 17 (G): litgpt's GPT, replayed
    if not litgpt and (arch.traced or arch.family not in REPLAYED_FAMILIES or not _replay_covers(arch, training)):
        # no replay for this family (or this run of it): the real model, traced
        from advisor.trace.estimate import traced_activation_terms

        activations, temporaries, breakdown = traced_activation_terms(arch, training, mode)
        if getattr(training, "offload_activations", False):
            return _offloaded(activations, temporaries, breakdown)
        return ActivationEstimate(activations=activations, temporaries=temporaries, breakdown=breakdown)
    ckpt = training.activation_checkpointing
    if (arch.attn_logit_softcapping or arch.attention_sinks) and training.attention == "sdpa":
        # transformers' sdpa_attention_forward refuses softcap (Gemma-2), GPT-OSS has no SDPA path (its sinks):
        # the model runs eager attention
        training = training.model_copy(update={"attention": "eager"})
    if training.attention in ("sdpa", "flash") and ckpt == "selective":
        ckpt = "none"                                                  # nothing quadratic to recompute
    terms = _traced(arch, _trace_key(training), mode, ckpt)
    n_train = _saving_layers(arch, training, ckpt)
    per_layer = terms["per_layer"]
    masks = 1
    if arch.hybrid:   # each saving layer after the first costs what one layer of its kind costs
        saving = arch.layer_kinds[arch.num_layers - n_train:]
        layers = terms["first_layer"] + sum(terms[f"kind:{k}"] for k in saving[1:])
        per_layer = max(v for k, v in terms.items() if k.startswith("kind:"))
        # one 4-D mask per attention type (create_causal_mask / create_sliding_window_...); dense and MoE layers
        # (DeepSeek) share the one causal mask; a kind's attention type is its first "/" field (Llama-4's
        # "chunked_attention/rope/moe" and "chunked_attention/rope/dense" share the chunked mask)
        masks = len({k.split("/")[0] for k in saving}) if arch.layer_pattern else 1
    else:
        layers = terms["first_layer"] + max(n_train - 1, 0) * terms["per_layer"]

    breakdown: dict[str, int] = {
        "embeddings": terms["embeddings"],
        "rope_cache": terms["rope_cache"],
        "per_layer": per_layer,
        "layers": layers,
        "final_norm": terms["final_norm"],
        "logits_and_loss": terms["logits_and_loss"],
    }
    b, s = training.micro_batch_size, training.seq_len
    if ckpt in ("full", "selective") and training.attention == "eager":
        # checkpointed calls keep the 4-D causal mask (inputs_embeds dtype) until backward: as a kwarg of
        # each checkpointed layer (full) or as an input of each checkpointed attention call (selective)
        breakdown["attention_mask"] = masks * b * s * s * (2 if mode.startswith(("half", "autocast16")) else 4)
    activations = sum(v for k, v in breakdown.items() if k != "per_layer")

    # -- temporaries: the largest transient on top of the saved set during backward, from the replay of the
    # backward (``_replay_backward``). Two moments: (1) the loss backward (and the final norm's), while
    # everything the forward saved is still alive; (2) the backward of the last decoder layer (the first one
    # to run; lower layers run with less saved). The logits tensor the caller's output holds is alive
    # throughout (``outputs = model(**batch); accelerator.backward(outputs.loss)``).
    held = terms["logits_held"]
    # forward_end: above the saved set; issue 17 (G): plus what the previous micro-step's graph still holds
    # (litgpt QLoRA: bitsandbytes 0.42 MatMul4Bit ctx.tensors, replaced with `loss` after this forward)
    prev_graph = (terms.get("previous_graph:first_layer", 0) + terms.get("previous_graph:logits_and_loss", 0)
                  + max(n_train - 1, 0) * terms.get("previous_graph:per_layer", 0))
    if prev_graph:
        breakdown["info:previous_step_graph"] = prev_graph
    logits_phase = max(held + terms["bw_head"], terms.get("forward_end", 0) + prev_graph + (held if prev_graph else 0))
    layer_transient = terms["bw_layer_transient"]
    layer_extra = 0
    if training.method == "qlora":
        from advisor import param_count as pc

        biggest = max(i * o for i, o, _ in pc.linear_shapes(arch).values())
        # bitsandbytes MatMul4Bit dequantizes the weight (compute dtype) for the forward and again for
        # grad_input in backward; one at a time
        deq = 4 if mode == "fp32" else 2
        if pc.lightning_quantized_head(training):
            # issue 17 (L): lightning's _Linear4bit.quantize quantizes ``weight.to(dtype=torch.half)``, so
            # dequantize_4bit returns fp16 and MatMul4Bit's ``.to(A.dtype)`` makes the compute-dtype copy beside it
            # (lightning 2.3 plugins/precision/bitsandbytes.py; bitsandbytes 0.42.0 autograd/_functions.py)
            deq += 2
            width = arch.word_embed_proj_dim or arch.hidden_size
            # the NF4 lm_head, dequantized for every call (each loss chunk), forward and backward: on top of the
            # loss and head moment
            breakdown["info:qlora_dequantized_lm_head"] = arch.vocab_size * width * deq
            logits_phase += breakdown["info:qlora_dequantized_lm_head"]
        breakdown["info:qlora_dequantized_weight"] = biggest * deq
        layer_extra = breakdown["info:qlora_dequantized_weight"]
    layer_phase = max(held + terms["bw_layer"] + layer_extra, 0)
    breakdown["temp:logits_and_loss_backward"] = logits_phase
    breakdown["temp:layer_backward"] = layer_phase
    temporaries = max(logits_phase, layer_phase)
    breakdown["info:logits_output_held"] = held
    breakdown["info:layer_transient"] = layer_transient + layer_extra
    if mode.startswith("autocast"):
        layer_copies = terms["weight_copy_layer"] * n_train
        if arch.hybrid:   # one layer's copies per saving layer, by kind (the plan replays more than two)
            layer_copies = sum(terms[f"copies:{k}"] for k in arch.layer_kinds[arch.num_layers - n_train:])
        breakdown["info:autocast_weight_copies"] = (layer_copies + terms["weight_copy_head"]) * 2
    if getattr(training, "offload_activations", False):
        return _offloaded(activations, temporaries, breakdown)
    return ActivationEstimate(activations=int(activations), temporaries=int(temporaries), breakdown=breakdown)


def _offloaded(activations: int, temporaries: int, breakdown: dict[str, int]) -> ActivationEstimate:
    """``--offload-activations``: every tensor autograd saves is packed to pinned CPU memory
    (``torch.autograd.graph.save_on_cpu(pin_memory=True)``: pack copies to CPU, unpack copies back to the
    device when the node runs; torchtune's ``OffloadActivations`` and DeepSpeed's
    ``activation_checkpointing.cpu_checkpointing`` do the same for what they save). On the GPU nothing saved
    stays between forward and backward; during a layer's backward its saved set is back on the GPU (counted
    whole, an upper bound) on top of that layer's transient. The held logits are the model output, not saved:
    they stay. ``info:offloaded_activations`` is the pinned host memory per GPU and the bytes crossing PCIe each
    way per micro-step (:func:`activation_offload_traffic`)."""
    held = breakdown.get("info:logits_output_held", 0)
    per_layer = breakdown.get("per_layer", 0)
    out = {k: (0 if not k.startswith(("temp:", "info:")) and k != "per_layer" else v) for k, v in breakdown.items()}
    out["info:offloaded_activations"] = int(activations)
    layer_phase = held + per_layer + breakdown.get("info:layer_transient", 0)
    logits_phase = breakdown.get("temp:logits_and_loss_backward", 0) + breakdown.get("logits_and_loss", 0)
    out["temp:layer_backward"] = layer_phase
    out["temp:logits_and_loss_backward"] = logits_phase
    return ActivationEstimate(activations=0, temporaries=int(max(layer_phase, logits_phase)), breakdown=out)


def activation_offload_traffic(est: ActivationEstimate) -> int:
    """Bytes one GPU moves to the host in the forward of a micro-step with ``--offload-activations`` (and the
    same back in its backward): the saved activations. A step-time model divides 2x this by the GPU's PCIe
    bandwidth for the transfer time; save_on_cpu copies synchronously, torchtune's offloading overlaps them
    with compute on a side stream."""
    return est.breakdown.get("info:offloaded_activations", 0)


__all__ = ["ActivationEstimate", "ComputeMode", "activation_memory", "compute_mode"]
