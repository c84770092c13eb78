"""Trace a real transformers causal LM without weights: parameters, saved-for-backward bytes, allocations.

How (written for dsadvise; the idea follows ``torch.distributed._tools.mem_tracker`` — storages tracked by
weak reference under a dispatch mode — and torchtitan's ``scripts/estimate/estimation.py`` — the model built
and stepped under ``FakeTensorMode``):

1. The config is built with ``AutoConfig.for_model`` and refused in one line unless transformers maps it to a
   causal LM (:func:`check_causal_lm`).
2. Parameters: the full-depth model is built on the ``meta`` device (no memory); totals, per-layer counts,
   trainable counts after the method (PEFT LoRA, freeze) come from it. Each decoder layer gets a *kind*: its
   class, its parameter shapes and its entries in the config's per-layer lists (``layer_types``,
   ``no_rope_layers``, ...), so Gemma-3's local/global layers or DeepSeek-V3's dense/MoE layers differ.
3. Saved bytes: prefixes of the model (the first ``k`` layers, per-layer lists cut to ``k``) are built under
   ``FakeTensorMode`` and run forward (labels → loss) and backward at the requested batch and sequence length,
   precision (autocast or a half model, with CUDA's autocast op lists and fused dropout:
   :mod:`advisor.trace.cuda_semantics`), attention implementation and checkpointing. Every tensor autograd
   saves is seen through ``saved_tensors_hooks``; storages are counted once (a saved view keeps its whole
   storage alive); parameters, anything sharing their storage and autocast's weight copies are excluded —
   the accounting of the CPU harness ``benchmarks/harness/kinds/saved.py``. A layer of kind K at index j ≥ 1 costs
   ``m(j+1) − m(j)`` (j: K's second occurrence when K is not layer 0's kind and occurs twice, since its first
   layer also creates what its kind shares, e.g. Gemma-3's global rotary tables); the full model is
   ``m(P) + Σ_{i ≥ P} cost(kind_i)`` for the shortest prefix P holding
   every kind at an index ≥ 1.
4. Allocation/free sequence: a dispatch mode records each new output storage and notices its release (weak
   storage reference expired); the backward's peak above the end-of-forward level (parameter gradients
   excluded: model states) is ``temporaries``.

Sequences are traced unpacked and unpadded (transformers' packed-sequence detection reads values, which fake
tensors do not have: it is told there is no packing, which is what a plain batch is), so SDPA gets
``is_causal`` as on a GPU. Results are cached on disk keyed by config, settings, library versions and the
tracer's code (:mod:`advisor.trace.cache`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from typing import Any, Iterator

from advisor.errors import InputError
from advisor.trace.cache import cached_trace, installed_version, library_versions
from advisor.trace.result import TraceEvent, TracedParameters, TraceResult, TraceSettings

_MAX_EVENTS = 20000


# ---------------------------------------------------------------------------------------------------- config

def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def check_causal_lm(cfg: dict, source: str = "config.json") -> tuple[Any, str]:
    """The transformers config of ``cfg`` and the causal-LM class it builds; one-line InputError otherwise."""
    _quiet()
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    from advisor.errors import did_you_mean

    from transformers import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") if isinstance(cfg.get("architectures"), list) else []
    if not isinstance(model_type, str) or not model_type:
        raise InputError(f"{source}: no model_type: dsadvise needs a Hugging Face config.json with model_type",
                         field="model")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise InputError(f"{source}: unknown model_type {model_type!r}"
                         f"{did_you_mean(model_type, tuple(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))}: transformers "
                         f"{installed_version('transformers')} does not know it", field="model")
    arch_name = next((a for a in archs if isinstance(a, str)), None)
    if cfg.get("is_encoder_decoder", getattr(CONFIG_MAPPING[model_type], "is_encoder_decoder", False)):
        raise InputError(f"{source}: dsadvise estimates causal language models; "
                         f"{arch_name or model_type} is an encoder-decoder model", field="model")
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if isinstance(causal, (list, tuple)):
        causal = causal[0]
    is_encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not cfg.get("is_decoder")
    if arch_name and not arch_name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        kind = "an encoder" if is_encoder or arch_name.endswith(
            ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")) \
            else "not a causal language model"
        raise InputError(f"{source}: dsadvise estimates causal language models; {arch_name} is {kind}",
                         field="model")
    if causal is None or is_encoder:
        name = arch_name or MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(model_type) or MODEL_MAPPING_NAMES.get(model_type)
        if isinstance(name, (list, tuple)):
            name = name[0]
        kind = "an encoder" if is_encoder or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES \
            else "not a causal language model"
        raise InputError(f"{source}: dsadvise estimates causal language models; {name or model_type} is {kind}",
                         field="model")
    d = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")}
    try:
        config = AutoConfig.for_model(model_type, **d)
    except Exception as exc:   # transformers' own validation of the keys: its message, on one line
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"{source}: transformers refuses this {model_type} config ({msg})", field="model") from None
    return config, causal


def _text_config(config):
    sub = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return sub if sub is not None else config


def _num_layers(config) -> int:
    return int(_text_config(config).num_hidden_layers)


def _per_layer_lists(text) -> dict[str, list]:
    """Config lists with one entry per decoder layer (``layer_types``, ``no_rope_layers``, ...)."""
    n = text.num_hidden_layers
    return {k: v for k, v in vars(text).items()   # an index list that happens to name every layer is not one
            if isinstance(v, list) and len(v) == n and "layer" in k and not k.startswith("_") and v != list(range(n))}


def _prefix_config(config, k: int):
    """``config`` with only its first ``k`` decoder layers (per-layer lists cut to ``k``)."""
    c = copy.deepcopy(config)
    text = _text_config(c)
    for key, value in _per_layer_lists(text).items():
        setattr(text, key, value[:k])
    text.num_hidden_layers = k
    return c


# ---------------------------------------------------------------------------------------------------- build

def _dtypes(mode: str):
    import torch

    return {"fp32": (torch.float32, None), "autocast-bf16": (torch.float32, torch.bfloat16),
            "autocast-fp16": (torch.float32, torch.float16), "half-bf16": (torch.bfloat16, None),
            "half-fp16": (torch.float16, None),
            # autocast over 16-bit weights (advisor.memory.core.activation_mode: FSDP MixedPrecision, a LoRA base
            # loaded in 16 bit)
            "autocast16-bf16": (torch.bfloat16, torch.bfloat16), "autocast16-fp16": (torch.float16, torch.float16)}[mode]


def _instantiate(config, attn: str, wdtype):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    prev = torch.get_default_dtype()
    torch.set_default_dtype(wdtype)
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    finally:
        torch.set_default_dtype(prev)
    for t in [*model.parameters(), *model.buffers()]:   # model.to(dtype), without swapping fake tensors
        if t.is_floating_point() and t.dtype != wdtype:
            t.data = t.data.to(wdtype)
    model.tie_weights()
    model.train()
    return model


def _instantiate_any(config, attn: str, wdtype):
    """:func:`_instantiate` with ``attn``, or with eager attention where the family has no SDPA path in
    transformers (GPT-OSS's attention sinks, Gemma-2's soft-capping): what from_config would run."""
    try:
        return _instantiate(config, attn, wdtype), attn
    except ValueError as exc:
        if attn == "eager" or "attention implementation" not in str(exc):
            raise
        return _instantiate(config, "eager", wdtype), "eager"


def _layer_list(model, n: int):
    import torch

    best = None
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n:
            if best is None:
                best = m
    if best is None:
        raise RuntimeError("cannot find the decoder layers")
    return best


def _apply_method(model, settings: TraceSettings, n_layers: int, prefix: bool = False):
    """Freeze / LoRA (PEFT, adapters in fp32 as ``autocast_adapter_dtype=True``, no dropout); full: as is.

    ``prefix``: ``model`` is the first layers of a model the targets matched (:func:`_trace_prefix`). There PEFT may
    find none of them: DeepSeek-V3 / Qwen-MoE under PEFT 0.21 map ``gate_proj``/``up_proj``/``down_proj`` to the
    routed experts' fused parameters (peft/utils/transformers_weight_conversion.py ``_convert_peft_config_moe``:
    they leave ``target_modules`` for ``target_parameters``), so a prefix of dense layers has no adapter and PEFT
    raises ``NoMatchingPeftModuleError``. That prefix is then what get_peft_model leaves of a layer it does not
    adapt: every weight frozen, and, under gradient checkpointing, the embedding output requiring grad
    (peft_model.py ``PeftModel.__init__`` -> ``_prepare_model_for_gradient_checkpointing``:
    ``enable_input_require_grads``)."""
    if settings.method == "full":
        return model
    if settings.method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        layers = _layer_list(model, n_layers)
        for layer in list(layers)[-settings.freeze_trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets: Any = _peft_targets(model, settings.lora_targets)
    lcfg = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, lora_dropout=settings.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lcfg, low_cpu_mem_usage=True)
    except ValueError as exc:
        if prefix and type(exc).__name__ == "NoMatchingPeftModuleError":
            for p in model.parameters():
                p.requires_grad_(False)
            if getattr(model, "is_gradient_checkpointing", False):
                model.enable_input_require_grads()
            _grad_after_layers(model)
            return model
        raise InputError(f"LoRA: {' '.join(str(exc).split())[:200]}", field="lora.target_modules") from None


def _peft_targets(model, targets: tuple[str, ...]) -> Any:
    """``target_modules`` for PEFT from dsadvise's targets (issue 17, L): ``all-linear`` alone stays PEFT's
    shorthand; next to other names it becomes the set PEFT itself expands it to
    (peft/tuners/tuners_utils.py ``_maybe_include_all_linear_layers``: every Linear/Conv1D but the output layer),
    since PEFT matches a list's entries as module names; ``lm_head`` names the model's output layer
    (``get_output_embeddings()``), refused in one line unless it is an nn.Linear."""
    import torch

    names = list(targets)
    if names == ["all-linear"]:
        return "all-linear"
    out: set[str] = set()
    for t in names:
        if t == "all-linear":
            from peft import LoraConfig
            from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

            out |= set(_maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules)
        elif t == "lm_head":
            head = model.get_output_embeddings()
            if not isinstance(head, torch.nn.Linear):
                kind = "none" if head is None else type(head).__name__
                raise InputError(f"LoRA target 'lm_head': the output layer of {type(model).__name__} is {kind}, "
                                 "not an nn.Linear that PEFT can adapt", field="lora.target_modules")
            out.add(next(n for n, m in model.named_modules() if m is head))
        else:
            out.add(t)
    return sorted(out)


def _grad_after_layers(model) -> None:
    """In the whole model an adapter above this prefix's layers makes their output require grad; the prefix has
    none, so the final norm's input is made to (a forward pre-hook: ``detach().requires_grad_()``, an alias of
    the same storage): what the final norm, the head and the loss save is then what they save in the whole
    model, and layers without a graph (no checkpointing) save nothing, as there."""
    import torch

    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    norms = [getattr(dec, name, None) for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm")]
    target = next((m for m in norms if isinstance(m, torch.nn.Module)), None) or model.get_output_embeddings()

    def hook(_module, args):
        x = args[0]
        if torch.is_tensor(x) and x.is_floating_point() and not x.requires_grad:
            return (x.detach().requires_grad_(True), *args[1:])
        return None

    target.register_forward_pre_hook(hook)


# ---------------------------------------------------------------------------------------------------- params

def _unique_params(module):
    seen: dict[int, Any] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _kinds(layers, text) -> tuple[str, ...]:
    lists = _per_layer_lists(text)
    names: dict[tuple, str] = {}
    kinds = []
    for i, layer in enumerate(layers):
        sig = (type(layer).__name__,
               tuple((n, tuple(p.shape), p.requires_grad) for n, p in layer.named_parameters()),
               tuple((k, json.dumps(v[i], default=str)) for k, v in sorted(lists.items())))
        if sig not in names:
            extra = "/".join(str(v[i]) for k, v in sorted(lists.items()) if k == "layer_types")
            names[sig] = f"{type(layer).__name__}{'[' + extra + ']' if extra else ''}#{len(names)}"
        kinds.append(names[sig])
    return tuple(kinds)


def _parameters(model, n_layers: int, config) -> TracedParameters:
    params = _unique_params(model)
    layers = _layer_list(model, n_layers)
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    lm_head = 0 if tied or head is None else sum(p.numel() for p in head.parameters())
    in_layers = {id(p) for p in layers.parameters()}
    per_layer = tuple(sum(p.numel() for p in layer.parameters()) for layer in layers)
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    embedding = total - lm_head - sum(p.numel() for p in params if id(p) in in_layers)
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    # MoE: a module whose parameters are [num_experts, ...] tensors holds every expert of a layer; a token
    # reaches top-k of them
    text = _text_config(config)
    top_k = next((getattr(text, k) for k in ("num_experts_per_tok", "experts_per_token", "moe_topk",
                                             "num_experts_per_token", "moe_k") if isinstance(getattr(text, k, None), int)), 0)
    idle = 0
    for m in layers.modules():
        e = getattr(m, "num_experts", None)
        own = [p for p in m.parameters(recurse=False) if isinstance(e, int) and p.dim() >= 2 and p.shape[0] == e]
        if not any(p.dim() >= 3 for p in own):   # a router's [num_experts, hidden] weight is not an expert
            continue
        if top_k and e > top_k:
            idle += sum(p.numel() for p in own) * (e - top_k) // e
    return TracedParameters(total=total, trainable=trainable, embedding=embedding, lm_head=lm_head,
                            per_layer=per_layer, largest_module=largest, active_per_token=total - idle)


# ---------------------------------------------------------------------------------------------------- recorders

def _is_weight_copy(t, param_ids: set[int], param_shapes: set[tuple]) -> bool:
    """A low-precision cast of a parameter (autocast's weight cast), as the harness decides it."""
    import torch

    if t._is_view() and t._base is not None:
        t = t._base
    fn = t.grad_fn
    if fn is not None:
        if type(fn).__name__ != "ToCopyBackward0":
            return False
        nxt = fn.next_functions
        return bool(nxt) and nxt[0][0] is not None and hasattr(nxt[0][0], "variable") and \
            id(nxt[0][0].variable) in param_ids
    return t.dtype in (torch.bfloat16, torch.float16) and tuple(t.shape) in param_shapes and not t.requires_grad


class _Saved:
    def __init__(self, model):
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        params = _unique_params(model)
        self.param_keys = {StorageWeakRef(p.untyped_storage()) for p in params}
        self.param_ids = {id(p) for p in params}
        self.frozen = any(not p.requires_grad for p in params)
        self.param_shapes = {tuple(p.shape) for p in params if p.dim() == 2} if self.frozen else set()
        self.seen: dict[Any, tuple[int, bool]] = {}

    def pack(self, t):
        st = t.untyped_storage()
        n = st.nbytes()
        if n:
            key = self._ref(st)
            if key not in self.param_keys and key not in self.seen:
                self.seen[key] = (n, _is_weight_copy(t, self.param_ids, self.param_shapes))
        return t.detach()

    @property
    def activations(self) -> int:
        return sum(n for n, wc in self.seen.values() if not wc)

    @property
    def weight_copies(self) -> int:
        return sum(n for n, wc in self.seen.values() if wc)


def _alloc_mode(existing=()):
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Alloc(TorchDispatchMode):
        """Allocation (+) and release (−) of every storage an op creates, in program order."""

        def __init__(self, existing=()):
            super().__init__()
            self.existing = {StorageWeakRef(t.untyped_storage()) for t in existing}   # parameters, inputs: not ours
            self.live: dict[Any, tuple[int, int]] = {}   # storage key → (bytes, event index)
            self.events: list[list] = []                 # [phase, delta, op, key id]
            self.phase = "forward"
            self._ids = 0

        def _collect(self, op: str) -> None:
            for key in [k for k in self.live if k.expired()]:
                n, kid = self.live.pop(key)
                self.events.append([self.phase, -n, op, kid])

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func.overloadpacket.__name__)
            self._collect(name)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    n = st.nbytes()
                    key = StorageWeakRef(st)
                    if n and key not in self.live and key not in self.existing:
                        self._ids += 1
                        self.live[key] = (n, self._ids)
                        self.events.append([self.phase, n, name, self._ids])
            return out

    return Alloc(existing)


@contextlib.contextmanager
def _fake_friendly() -> Iterator[None]:
    """transformers reads mask values to skip the causal mask for SDPA; under fake tensors it cannot, so it is
    told what a plain unpadded, unpacked batch tells it on a GPU (module docstring). MoE experts: torch's
    ``_grouped_mm`` meta kernel accepts bf16 only (the CUDA kernel's rule), so other dtypes take transformers'
    own fallback op (``_grouped_mm_fallback``, same inputs saved), as they must on a GPU."""
    import torch
    import transformers.masking_utils as mu

    try:
        import transformers.integrations.moe as moe
        orig_can = moe._can_use_grouped_mm

        def can(input, weight, offs):
            return weight.dtype == torch.bfloat16 and orig_can(input, weight, offs)

        moe._can_use_grouped_mm = can
    except (ImportError, AttributeError):
        moe = None
    orig_ignore, orig_packed = mu._ignore_causal_mask_sdpa, mu.find_packed_sequence_indices

    def ignore(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size=None):
        return orig_ignore(None, q_length, kv_length, 0, 0, local_attention_size)

    mu._ignore_causal_mask_sdpa = ignore
    mu.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        mu._ignore_causal_mask_sdpa, mu.find_packed_sequence_indices = orig_ignore, orig_packed
        if moe is not None:
            moe._can_use_grouped_mm = orig_can


class _Prefix:
    """One traced prefix: saved bytes (activations, weight copies), logits bytes, events, backward peak."""

    def __init__(self, activations: int, weight_copies: int, logits: int, temporaries: int, events: list):
        self.activations, self.weight_copies, self.logits = activations, weight_copies, logits
        self.temporaries, self.events = temporaries, events


_ATTN_DROPOUT_KEYS = ("attn_pdrop", "attention_dropout", "attn_dropout", "attention_probs_dropout_prob")


def _fakeify(model, fake_mode) -> None:
    """Replace the meta parameters and buffers of ``model`` by fake CPU tensors (tied weights stay tied)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    cpu = torch.device("cpu")
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(FakeTensor(fake_mode, p.data, cpu), requires_grad=p.requires_grad)
            module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and b.device.type == "meta":
                if id(b) not in memo:
                    memo[id(b)] = FakeTensor(fake_mode, b, cpu)
                module._buffers[name] = memo[id(b)]


def _trace_prefix(config, k: int, settings: TraceSettings, want_events: bool) -> _Prefix:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    from advisor.trace.cuda_semantics import cuda_semantics

    wdtype, low = _dtypes(settings.mode)
    cfg = _prefix_config(config, k)
    text = _text_config(cfg)
    if settings.attention == "sdpa":
        # CUDA's fused SDPA kernels regenerate the attention-dropout mask from a Philox seed (nothing of size
        # b*h*s*s is saved); CPU has no fused SDPA dropout kernel and would take the math path. Traced with
        # attention dropout off, as the harness measures (benchmarks/harness/models.py, sdpa_no_attn_dropout).
        for key in _ATTN_DROPOUT_KEYS:
            if getattr(text, key, None):
                setattr(text, key, 0.0)
    text.use_cache = False
    cfg.use_cache = False
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    if settings.method == "lora":
        # PEFT moves its adapters with .to(), which cannot swap fake tensors: build and wrap on the meta
        # device, then give every parameter and buffer a fake CPU twin (same shape, dtype, requires_grad)
        with torch.device("meta"):
            model = _instantiate(cfg, settings.attention, wdtype)
            if settings.checkpointing == "full":
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model = _apply_method(model, settings, k, prefix=True)
        _fakeify(model, fake)
    with fake, _fake_friendly(), cuda_semantics(low):
        if settings.method != "lora":
            model = _instantiate(cfg, settings.attention, wdtype)
            if settings.checkpointing == "full":
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model = _apply_method(model, settings, k)
        saved = _Saved(model)
        vocab = int(text.vocab_size)
        ids = torch.zeros((settings.batch, settings.seq_len), dtype=torch.long)
        del vocab
        alloc = _alloc_mode([*model.parameters(), *model.buffers(), ids])
        ac = torch.autocast("cpu", dtype=low) if low is not None else contextlib.nullcontext()
        with alloc:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), ac:
                out = model(input_ids=ids, labels=ids)
            logits = out.logits.untyped_storage().nbytes()
            alloc._collect("forward-end")
            alloc.phase = "backward"
            if out.loss.requires_grad:        # a LoRA prefix without adapter and without checkpointing: no graph
                out.loss.backward()
            alloc._collect("backward-end")
        grads = {StorageWeakRef(p.grad.untyped_storage()) for p in model.parameters() if p.grad is not None}
        grad_ids = {alloc.live[g][1] for g in grads if g in alloc.live}
    events = [e for e in alloc.events if e[3] not in grad_ids]
    level = peak = fwd_end = 0
    for phase, delta, _, _ in events:
        level += delta
        if phase == "forward":
            fwd_end = level
        else:
            peak = max(peak, level)
    base = saved.activations + saved.weight_copies
    temporaries = max(peak - base, 0)
    del fwd_end
    kept = [TraceEvent(phase=p, delta=d, op=o, storage=i) for p, d, o, i in events[:_MAX_EVENTS]] if want_events else []
    return _Prefix(saved.activations, saved.weight_copies, logits, temporaries, kept)


# ---------------------------------------------------------------------------------------------------- main

def trace_model(cfg: dict, settings: TraceSettings, *, source: str = "config.json",
                use_cache: bool = True) -> TraceResult:
    """Trace the causal LM of HF config ``cfg`` under ``settings`` (bytes; see the module docstring); kept in
    the disk cache (:mod:`advisor.trace.cache`) unless ``use_cache`` is False."""
    return cached_trace("trace", cfg, settings, TraceResult, lambda: _trace_model(cfg, settings, source), use_cache)


def _trace_model(cfg: dict, settings: TraceSettings, source: str) -> TraceResult:
    start = time.perf_counter()
    config, arch_class = check_causal_lm(cfg, source)
    import torch

    n = _num_layers(config)
    wdtype, _ = _dtypes(settings.mode)
    with torch.device("meta"):
        full, attention = _instantiate_any(config, settings.attention, wdtype)
    full = _apply_method(full, settings, n)
    params = _parameters(full, n, config)
    kinds = _kinds(_layer_list(full, n), _text_config(config))
    # the first layer holding a trainable parameter: below it (a LoRA whose targets skip the first layers, e.g.
    # DeepSeek-V3's dense layers under expert-only targets, see _apply_method) the layers have no adapter, and
    # that first adapted layer's input needs no gradient, so it saves less than the later layers of its kind
    first_trained = next((i for i, layer in enumerate(_layer_list(full, n))
                          if any(p.requires_grad for p in layer.parameters())), 0)
    del full

    # the layer whose cost stands for its kind: the first at index >= 1; for a kind other than layer 0's, its
    # second occurrence where there is one, because the first layer of a kind also creates what all layers of
    # that kind then share (Gemma-3's global rotary tables, a second mask): counted once, in the prefix
    rep: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        if i >= 1 and kind not in rep:
            rep[kind] = i
        elif i >= 1 and kind != kinds[0] and rep[kind] == kinds.index(kind, 1):
            rep[kind] = i
    prefix = max([j + 1 for j in rep.values()] + [1])
    if settings.method == "freeze":   # the trainable layers are the last ones: trace the whole depth's tail
        prefix = max(prefix, min(n, settings.freeze_trainable_layers + 1))
    lengths = sorted({prefix} | {j for j in rep.values()} | {j + 1 for j in rep.values()})
    boundary = 0 < first_trained < prefix and settings.method == "lora"
    if boundary:        # that layer measured on its own (traced[b + 1] - traced[b]), not as its kind's later layers
        lengths = sorted(set(lengths) | {first_trained, first_trained + 1})
    if settings.method == "freeze":
        raise InputError("the tracer does not trace method=freeze yet", field="method")
    run = settings.model_copy(update={"attention": attention})
    traced = {k: _trace_prefix(config, k, run, k == prefix) for k in lengths}
    cost = {kind: traced[j + 1].activations - traced[j].activations for kind, j in rep.items()}
    copies = {kind: traced[j + 1].weight_copies - traced[j].weight_copies for kind, j in rep.items()}
    per_layer = tuple(cost.get(kind, 0) for kind in kinds)
    if boundary:
        b = first_trained
        per_layer = (*per_layer[:b], traced[b + 1].activations - traced[b].activations, *per_layer[b + 1:])
    top = traced[prefix]
    total = top.activations + sum(per_layer[prefix:])
    fixed = total - sum(per_layer)
    weight_copies = top.weight_copies + sum(copies.get(kind, 0) for kind in kinds[prefix:])
    result = TraceResult(
        model_type=str(cfg.get("model_type")), architecture_class=arch_class, settings=settings,
        attention=attention, num_layers=n,
        layer_kinds=kinds, traced_prefix=prefix, parameters=params, activations=total, saved_fixed=fixed,
        saved_per_layer=per_layer, weight_copies=weight_copies, logits_held=top.logits,
        temporaries=top.temporaries, events=tuple(top.events), seconds=round(time.perf_counter() - start, 3),
        library_versions=library_versions())
    return result


def trace_parameters(cfg: dict, settings: TraceSettings | None = None, *, source: str = "config.json",
                     use_cache: bool = True) -> TracedParameters:
    """Parameter counts of the full-depth meta-device build (after the method of ``settings``), cached."""
    settings = settings or TraceSettings(seq_len=1)
    # what the counts do not depend on is left out of the key
    key_settings = settings.model_copy(update={"seq_len": 1, "batch": 1, "mode": "fp32", "checkpointing": "none"})
    return cached_trace("trace-params", cfg, key_settings, TracedParameters,
                        lambda: _trace_parameters(cfg, settings, source), use_cache)


def _trace_parameters(cfg: dict, settings: TraceSettings, source: str) -> TracedParameters:
    config, _ = check_causal_lm(cfg, source)
    import torch

    n = _num_layers(config)
    with torch.device("meta"):
        full, _ = _instantiate_any(config, "sdpa", torch.float32)
    full = _apply_method(full, settings, n)
    return _parameters(full, n, config)


def describe(cfg: dict, source: str = "config.json") -> dict:
    """Shape facts of a traced config for the rest of dsadvise (element counts): layers, widths, heads."""
    config, arch_class = check_causal_lm(cfg, source)
    text = _text_config(config)

    def get(*names, default=None):
        for name in names:
            v = getattr(text, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return default

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head", default=1)
    kv = get("num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = get("head_dim", default=max(1, (hidden or heads) // heads))
    experts = get("num_experts", "n_routed_experts", "num_local_experts", default=0)
    top_k = get("num_experts_per_tok", "experts_per_token", "moe_topk", default=0)
    inner = get("intermediate_size", "ffn_hidden_size", "n_inner", "moe_intermediate_size", default=4 * (hidden or 1))
    return dict(arch_class=arch_class, num_layers=_num_layers(config), hidden_size=hidden or 1,
                num_attention_heads=heads, num_key_value_heads=kv if heads % kv == 0 else heads, head_dim=head_dim,
                intermediate_size=inner, vocab_size=get("vocab_size", default=1),
                max_position_embeddings=get("max_position_embeddings", "n_positions", default=2048),
                tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False) or
                                         getattr(config, "tie_word_embeddings", False)),
                num_experts=experts, experts_per_token=min(top_k, experts) if experts else 0)
