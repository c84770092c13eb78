"""Ground truth from real engines (2 processes, CPU, gloo): the bytes rank 0 holds in the state dicts a checkpoint
save of a PEFT LoRA model gathers - DeepSpeed ZeRO-3's two (tests/memory/ds_save_probe.py), FSDP1's
FULL_STATE_DICT (tests/memory/fsdp_save_probe.py) - equal dsadvise's checkpoint-save terms
(advisor/memory/checkpoint_save.py) for the same tiny Llama."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.hf_config import architecture_from_hf_config
from advisor.memory.bytes_per_param import state_bytes
from advisor.memory.checkpoint_save import fsdp_units, zero3_adapter_bytes, zero3_whole_model_bytes
from advisor.param_count import count_parameters
from advisor.specs import StrategySpec, TrainingSpec

pytest.importorskip("deepspeed")
pytest.importorskip("peft")

CONFIG = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2000,
          "max_position_embeddings": 256, "tie_word_embeddings": False}
RANK = 8
# LoRA r=8 on every decoder linear of that config, by hand: q 8x(256+256), k and v 8x(256+128), o 8x(256+256),
# gate and up 8x(256+688), down 8x(688+256), two layers
TRAINABLE = 2 * (4096 + 3072 + 3072 + 4096 + 3 * 7552)


def _launch(tmp, probe: str, port: int) -> dict:
    cfg, out = tmp / "config.json", tmp / "out.json"
    cfg.write_text(json.dumps(CONFIG))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port),
                           str(Path(__file__).with_name(probe)), str(cfg), str(out), str(RANK)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    return _launch(tmp_path_factory.mktemp("ds_save"), "ds_save_probe.py", 29743)


@pytest.mark.slow
def test_zero3_lora_save_terms_match_the_engine(measured):
    arch = architecture_from_hf_config(CONFIG)
    counts = count_parameters(arch)
    assert measured["trainable_elements"] == TRAINABLE
    assert measured["total_elements"] == counts.total + TRAINABLE
    t = TrainingSpec(method="lora", lora={"rank": RANK, "target_modules": ["all-linear"]}, precision="bf16")
    z3 = StrategySpec.from_name("zero3", "none", "none")
    # the HF Trainer (transformers >= 5.0): exclude_frozen_parameters=True, PEFT's fp32 adapters only
    assert measured["adapter_dtypes"] == ["torch.float32"] and measured["base_dtypes"] == ["torch.bfloat16"]
    assert zero3_adapter_bytes(TRAINABLE, t) == measured["adapters"] == TRAINABLE * 4
    # accelerate's get_state_dict: the whole model, bf16 base and fp32 adapters
    assert zero3_whole_model_bytes(arch, counts, TRAINABLE, state_bytes(t, z3), t) == measured["whole"]


@pytest.mark.slow
def test_fsdp_full_state_dict_of_a_lora_model_is_the_whole_model(tmp_path):
    """FSDP1 FULL_STATE_DICT (what the Trainer's save_model gathers for a PEFT model): every base weight and
    every adapter, fp32 here: (base + adapters) x 4 bytes."""
    real = _launch(tmp_path, "fsdp_save_probe.py", 29744)
    arch = architecture_from_hf_config(CONFIG)
    counts = count_parameters(arch)
    t = TrainingSpec(method="lora", lora={"rank": RANK, "target_modules": ["all-linear"]}, precision="fp32",
                     checkpoint_save="consolidated")
    fsdp = StrategySpec.from_name("fsdp-full", "none", "none")
    assert real["lora_keys"] == 4 * 7        # lora_A and lora_B of 7 linears in 2 layers
    assert fsdp_units(arch, counts, TRAINABLE, state_bytes(t, fsdp), t, fsdp)[0] == real["whole"] \
        == (counts.total + TRAINABLE) * 4
