"""Framework scenarios: each is the `dsadvise generate` command line (without --framework) that renders it."""

from __future__ import annotations

import shlex

import pytest

FRAMEWORK_SCENARIOS: dict[str, str] = {
    # LoRA on one 24 GiB GPU: two targets, checkpointing, rank 8, micro-batch 2.
    "llama-2-7b-1x24g-lora": "--model llama-2-7b --gpus 1 --vram 24 --strategy single --method lora --lora-rank 8 "
                             "--lora-targets q_proj,v_proj --checkpointing full --micro-batch 2 --seq-len 1024",
    # QLoRA under ZeRO-3 on 4 GPUs with Liger's fused linear cross-entropy: 4-bit storage in the compute dtype.
    "llama-2-7b-4x24g-qlora-zero3": "--model llama-2-7b --gpus 4 --vram 24 --strategy zero3 --method qlora "
                                    "--checkpointing full --micro-batch 4 --global-batch 64 --loss fused-linear",
    # Full fine-tuning, ZeRO-3 with the optimizer on the CPU, 8 x A100 80 GB.
    "llama-2-7b-8xa100-full-zero3": "--model llama-2-7b --gpus 8 --gpu a100-80g --strategy zero3 "
                                    "--offload-optimizer cpu --checkpointing full --micro-batch 2 --global-batch 128",
    # FSDP FULL_SHARD, full fine-tuning, no checkpointing.
    "llama-2-7b-8xa100-fsdp-full": "--model llama-2-7b --gpus 8 --gpu a100-80g --strategy fsdp-full --micro-batch 1",
}
FRAMEWORKS = ("llamafactory", "hf-trainer", "trl", "axolotl")


def plan_scenario(argv: str, framework: str):
    """(model, hw, training, strategy, gas, files) as `dsadvise generate ARGV --framework F` renders them."""
    from advisor.cli import build_parser
    from advisor.cli.configs import plan
    from advisor.render.frameworks import render_framework
    from advisor.render.render import render_files

    args = build_parser().parse_args(["generate", *shlex.split(argv), "--framework", framework, "--out", "/x"])
    model, hw, training, strategy, gas, rec = plan(args)
    files = render_files(model, hw, training, strategy, gradient_accumulation_steps=gas, hf_trainer=True)
    files.update(render_framework(model, hw, training, strategy, framework, gradient_accumulation_steps=gas))
    return model, hw, training, strategy, gas, files


@pytest.fixture(scope="session")
def framework_rendered() -> dict[tuple[str, str], tuple]:
    return {(name, fw): plan_scenario(scenario_argv(argv, fw), fw) for name, argv in FRAMEWORK_SCENARIOS.items()
            for fw in FRAMEWORKS}


def scenario_argv(argv: str, framework: str) -> str:
    """The scenario's command line for ``framework``: TRL's SFTTrainer refuses Liger's fused linear cross-entropy
    (it always runs its own fused LM head), so TRL's files are rendered without ``--loss fused-linear`` (the
    refusal: test_framework_files.py, test_framework_trainers.py)."""
    return argv.replace(" --loss fused-linear", "") if framework == "trl" else argv
