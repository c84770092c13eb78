"""The batch arithmetic every stage shares: gradient accumulation from the global batch, and the micro-batch
sizes that reach a global batch exactly.

One rule for users: the global batch must be a multiple of micro-batch x GPUs, because DeepSpeed asserts
``train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size``
(deepspeed/runtime/config.py, ``_batch_assertion``) and accelerate / the HF Trainer step the optimizer every
``gradient_accumulation_steps`` micro-batches. Anything else is refused with an InputError naming
``--global-batch``, never rounded silently.
"""

from __future__ import annotations

from .errors import InputError


def gradient_accumulation(global_batch: int | None, micro_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step: global batch / (micro-batch x world size); 1 without a global batch.

    Raises InputError (``--global-batch``) when the global batch is not a whole multiple of micro x world.
    """
    if global_batch is None:
        return 1
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise InputError(f"{global_batch} is not a multiple of micro-batch {micro_batch} x {world_size} GPU(s) = "
                         f"{per_step}: DeepSpeed needs train_batch_size = micro x accumulation x world",
                         field="--global-batch")
    return global_batch // per_step


def _divisors(n: int) -> list[int]:
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def dividing_micro_batches(global_batch: int, world_size: int, start: int, cap: int) -> tuple[int, ...]:
    """The micro-batch sizes in [start, cap] that reach ``global_batch`` exactly on ``world_size`` GPUs,
    smallest first. Raises InputError (``--global-batch``) when there is none."""
    if global_batch < world_size * start:
        raise InputError(f"{global_batch} is less than --micro-batch {start} x {world_size} GPU(s); give a global "
                         f"batch of at least {world_size * start}", field="--global-batch")
    per_gpu, rest = divmod(global_batch, world_size)
    if rest:
        raise InputError(f"{global_batch} is not a multiple of the {world_size} GPU(s): DeepSpeed needs "
                         "train_batch_size = micro x accumulation x world", field="--global-batch")
    values = tuple(d for d in _divisors(per_gpu) if start <= d <= cap)
    if not values:
        raise InputError(f"no micro-batch between {start} and {cap} divides the {per_gpu} samples per GPU of global "
                         f"batch {global_batch}; give a global batch that is a multiple of micro-batch x "
                         f"{world_size} GPU(s), or another --micro-batch / --max-micro-batch", field="--global-batch")
    return values
