"""Scenarios shared by the render tests: each is the `dsadvise generate` command line that renders it."""

from __future__ import annotations

import shlex

import pytest

SCENARIOS: dict[str, str] = {
    # 7B on 4 x 24 GiB: ZeRO-3 with optimizer offload and full checkpointing (what fits there).
    "7b-4x24gib-zero3": "--model 7B --gpus 4 --vram 24 --strategy zero3 --offload-optimizer cpu "
                        "--checkpointing full --micro-batch 4",
    # The same for the HF Trainer: batch sizes and clipping "auto", DeepSpeed's CPU Adam from an optimizer block.
    "7b-4x24gib-zero3-hf-trainer": "--model 7B --gpus 4 --vram 24 --strategy zero3 --offload-optimizer cpu "
                                   "--checkpointing full --micro-batch 4 --hf-trainer",
    "gpt2-single-gpu": "--model gpt2 --gpus 1 --vram 24 --strategy single",
    "llama-2-7b-8xa100-80g-zero2": "--model llama-2-7b --gpus 8 --gpu a100-80g --strategy zero2 --global-batch 64",
    "1.3b-4xv100-fp16-zero2": "--model 1.3B --gpus 4 --gpu v100-32g --strategy zero2 --checkpointing full",
    "13b-2x8xa100-40g-zero3": "--model llama-2-13b --nodes 2 --gpus 8 --gpu a100-40g --strategy zero3 "
                              "--checkpointing full --main-process-ip 10.0.0.1",
    "llama-2-7b-8xa100-80g-fsdp-full": "--model llama-2-7b --gpus 8 --gpu a100-80g --strategy fsdp-full "
                                       "--checkpointing full",
    # issue 14: an MoE model under ZeRO-3: accelerate's deepspeed_moe_layer_cls_names marks its MoE blocks as leaves
    "qwen3-30b-a3b-8xh100-zero3": "--model qwen3-30b-a3b --gpus 8 --gpu h100-sxm --strategy zero3 "
                                  "--checkpointing full",
}


# issue 15: tensor / sequence / context parallel layouts and FSDP2 (their own tests: tests/render/test_parallel.py)
LAYOUT_SCENARIOS: dict[str, str] = {
    # the scenario: 70B full fine-tune at 32k on 8 x H100 with DeepSpeed Ulysses (ALST)
    "llama-3.1-70b-8xh100-32k-sp8-zero3": "--model llama-3.1-70b --gpus 8 --gpu h100-sxm --strategy zero3 --sp 8 "
                                          "--seq-len 32768 --checkpointing full --attention flash",
    "llama-3.1-70b-8xh100-fsdp2-tp2": "--model llama-3.1-70b --gpus 8 --gpu h100-sxm --strategy fsdp-full "
                                      "--fsdp-version 2 --tp 2 --checkpointing full",
    "llama-3.1-8b-8xh100-64k-fsdp2-cp4": "--model llama-3.1-8b --gpus 8 --gpu h100-sxm --strategy fsdp-full "
                                         "--fsdp-version 2 --cp 4 --seq-len 65536 --checkpointing full "
                                         "--attention sdpa",
    "llama-3.1-70b-2x8xh100-hsdp": "--model llama-3.1-70b --nodes 2 --gpus 8 --gpu h100-sxm --strategy fsdp-full "
                                   "--fsdp-version 2 --dp-replicate 2 --checkpointing full --main-process-ip 10.0.0.1",
    "llama-3.1-70b-8xh100-autotp8-zero1": "--model llama-3.1-70b --gpus 8 --gpu h100-sxm --strategy zero1 --tp 8 "
                                          "--checkpointing full",
}


def parse_generate(argv: str, out: str = "/nonexistent"):
    from advisor.cli import build_parser

    return build_parser().parse_args(["generate", *shlex.split(argv), "--out", out])


def render_scenario(argv: str) -> dict[str, str]:
    """Render what `dsadvise generate ARGV` would write (same planning path), without writing."""
    from advisor.cli.configs import plan
    from advisor.render.render import render_files

    args = parse_generate(argv)
    model, hw, training, strategy, gas, rec = plan(args)
    return render_files(model, hw, training, strategy, gradient_accumulation_steps=gas, hf_trainer=args.hf_trainer,
                        main_process_ip=args.main_process_ip, main_process_port=args.main_process_port,
                        recommendation=rec)


@pytest.fixture(scope="session")
def rendered() -> dict[str, dict[str, str]]:
    return {name: render_scenario(argv) for name, argv in SCENARIOS.items()}


@pytest.fixture(scope="session")
def rendered_layouts() -> dict[str, dict[str, str]]:
    return {name: render_scenario(argv) for name, argv in LAYOUT_SCENARIOS.items()}
