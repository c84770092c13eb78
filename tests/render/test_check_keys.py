"""`dsadvise check` estimates a user's file as it will run (advisor/render/read_keys.py, check_estimate.py): each
file below is written as users write them (the frameworks' documented examples, with the keys that change memory
set), and check's estimate must equal `advisor.api.estimate` with the flags those keys mean, written out here by
hand from the frameworks' sources; the keys no flag models are named as not counted."""

from __future__ import annotations

import json
import textwrap

import pytest

from advisor.api import estimate
from advisor.cli import main

HW = ["--gpus", "4", "--gpu", "a100-80g", "--model", "llama-2-7b", "--no-engine-check", "--json"]


def check(capsys, tmp_path, name: str, text: str, *flags: str, files: dict | None = None) -> tuple[dict, dict]:
    """(the fit verdict's estimate block, {setting: message} of the not-counted findings)."""
    for other, body in (files or {}).items():
        (tmp_path / other).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / other).write_text(textwrap.dedent(body), encoding="utf-8")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    main(["check", str(path), *(flags or HW)])
    report = json.loads(capsys.readouterr().out)
    verdicts = [f for f in report["findings"] if "estimate" in f]
    assert len(verdicts) == 1, report["findings"]
    skipped = {f["setting"]: f["message"] for f in report["findings"] if f["message"].startswith("not counted")}
    return verdicts[0]["estimate"] | {"message": verdicts[0]["message"]}, skipped


def per_gpu(**kw) -> int:
    return estimate("llama-2-7b", **kw).per_gpu.total


A100X4 = {"gpus": 4, "gpu": "a100-80g"}

# LLaMA-Factory's examples/deepspeed/ds_z3_config.json (the HF "auto" template its ZeRO-3 examples point to)
LF_DS_Z3 = """\
{
  "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto", "zero_allow_untested_optimizer": true,
  "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
           "hysteresis": 2, "min_loss_scale": 1},
  "bf16": {"enabled": "auto"},
  "zero_optimization": {"stage": 3, "overlap_comm": false, "contiguous_gradients": true, "sub_group_size": 1e9,
    "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": true}
}
"""


def test_llamafactory_qlora_under_zero3(capsys, tmp_path):
    """LLaMA-Factory 0.9.5 (hparams/model_args.py, finetuning_args.py; model_utils/checkpointing.py, liger_kernel.py):
    use_unsloth_gc keeps each checkpointed layer's input on the CPU, enable_liger_kernel at stage sft fuses the
    loss, double_quantization false, flash_attn fa2; upcast_layernorm (fp32 norms) is not modelled."""
    est, skipped = check(capsys, tmp_path, "llama2_qlora_sft_ds3.yaml", """\
        ### model
        model_name_or_path: meta-llama/Llama-2-7b-hf
        quantization_bit: 4
        double_quantization: false
        upcast_layernorm: true
        enable_liger_kernel: true
        use_unsloth_gc: true
        flash_attn: fa2
        ### method
        stage: sft
        do_train: true
        finetuning_type: lora
        lora_rank: 16
        lora_target: q_proj,v_proj
        lora_dropout: 0.05
        deepspeed: examples/deepspeed/ds_z3_config.json
        ### dataset
        dataset: alpaca_en_demo
        template: llama2
        cutoff_len: 2048
        packing: true
        ### train
        output_dir: saves/llama2-7b/qlora/sft
        per_device_train_batch_size: 2
        gradient_accumulation_steps: 4
        learning_rate: 1.0e-4
        num_train_epochs: 3.0
        bf16: true
        optim: paged_adamw_8bit
        """, files={"examples/deepspeed/ds_z3_config.json": LF_DS_Z3})
    assert est["per_gpu_bytes"] == per_gpu(
        **A100X4, strategy="zero3", bucket_sizes="auto", method="qlora", lora_rank=16, lora_targets=("q_proj", "v_proj"),
        lora_dropout=0.05, double_quant=False, checkpointing="full", offload_activations=True, loss="fused-linear",
        attention="flash", precision="bf16", optimizer="adamw-8bit", micro_batch=2, global_batch=2 * 4 * 4,
        seq_len=2048)
    assert skipped.keys() == {"upcast_layernorm", "zero_optimization.overlap_comm"}
    assert est["may_be_low"] and "may be low: not counted upcast_layernorm" in est["message"]


def test_llamafactory_defaults_and_a_stage_that_keeps_the_logits(capsys, tmp_path):
    """What LLaMA-Factory does when the file is silent: cutoff_len 2048, checkpointing on, lora_target all, rank 8;
    at stage dpo enable_liger_kernel keeps the logits (require_logits): the plain loss, named."""
    est, skipped = check(capsys, tmp_path, "llama2_lora_dpo.yaml", """\
        model_name_or_path: meta-llama/Llama-2-7b-hf
        stage: dpo
        do_train: true
        finetuning_type: lora
        enable_liger_kernel: true
        dataset: dpo_en_demo
        template: llama2
        per_device_train_batch_size: 1
        bf16: true
        """)
    assert est["per_gpu_bytes"] == per_gpu(**A100X4, method="lora", lora_rank=8, checkpointing="full",
                                           precision="bf16", micro_batch=1, seq_len=2048)
    assert "enable_liger_kernel" in skipped and not est["may_be_low"]


def test_axolotl_qlora_with_offloaded_checkpoints(capsys, tmp_path):
    """axolotl 0.19.0: gradient_checkpointing offload is activation_offloading true (validation.py), bf16 auto is
    bf16 on an A100 (utils/config normalize_config), the Liger plugin's fused linear cross-entropy; the
    lora_modules_to_save full copies are not modelled."""
    est, skipped = check(capsys, tmp_path, "qlora.yml", """\
        base_model: meta-llama/Llama-2-7b-hf
        plugins:
          - axolotl.integrations.liger.LigerPlugin
        liger_fused_linear_cross_entropy: true
        load_in_4bit: true
        adapter: qlora
        lora_r: 32
        lora_alpha: 16
        lora_dropout: 0.05
        lora_target_linear: true
        lora_modules_to_save:
          - embed_tokens
          - lm_head
        datasets:
          - path: mhenrichsen/alpaca_2k_test
            type: alpaca
        sequence_len: 2048
        sample_packing: true
        pad_to_sequence_len: true
        output_dir: ./outputs/qlora-out
        gradient_accumulation_steps: 4
        micro_batch_size: 2
        num_epochs: 1
        optimizer: adamw_bnb_8bit
        learning_rate: 0.0002
        bf16: auto
        tf32: false
        gradient_checkpointing: offload
        flash_attention: true
        """)
    assert est["per_gpu_bytes"] == per_gpu(
        **A100X4, method="qlora", lora_rank=32, lora_dropout=0.05, lora_targets=("all-linear",),
        checkpointing="full", offload_activations=True, loss="fused-linear", attention="flash", precision="bf16",
        optimizer="adamw-8bit", micro_batch=2, global_batch=2 * 4 * 4, seq_len=2048, strategy="ddp")
    assert set(skipped) == {"lora_modules_to_save"} and est["may_be_low"]


@pytest.mark.parametrize("extra, targets, said", [
    ("[lm_head]", ("all-linear", "lm_head"), False),                 # the output layer joins every linear
    ("[q_proj, embed_tokens]", ("all-linear",), True),               # q_proj is in all-linear; the embedding is not counted
])
def test_axolotl_lora_target_linear_with_extra_modules_is_the_union(capsys, tmp_path, extra, targets, said):
    """axolotl (loaders/adapter.py _build_peft_lora_config): lora_target_linear adapts every linear but the output
    embedding AND the lora_target_modules listed, so an lm_head listed there is adapted too."""
    est, skipped = check(capsys, tmp_path, "lora.yml", f"""\
        base_model: meta-llama/Llama-2-7b-hf
        adapter: lora
        lora_r: 16
        lora_target_linear: true
        lora_target_modules: {extra}
        sequence_len: 1024
        micro_batch_size: 1
        bf16: true
        """)
    assert est["per_gpu_bytes"] == per_gpu(**A100X4, method="lora", lora_rank=16, lora_targets=targets,
                                           precision="bf16", micro_batch=1, global_batch=4, seq_len=1024,
                                           strategy="ddp")
    assert ("lora_target_modules" in skipped) == said


def test_hf_trainer_arguments_under_fsdp(capsys, tmp_path):
    """transformers 5.24 TrainingArguments: fsdp "full_shard auto_wrap offload", fsdp_config's activation
    checkpointing, accelerator_config's sync_each_batch, use_liger_kernel; label_smoothing_factor's fp32
    log_softmax is not modelled, and neither is what the script loads (no hf_model_args.yaml beside)."""
    est, skipped = check(capsys, tmp_path, "train_args.json", json.dumps({
        "output_dir": "out", "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "bf16": True,
        "optim": "adamw_torch_fused", "learning_rate": 2e-5, "use_liger_kernel": True, "label_smoothing_factor": 0.1,
        "fsdp": "full_shard auto_wrap offload",
        "fsdp_config": {"activation_checkpointing": True, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                        "backward_prefetch": "backward_post"},
        "accelerator_config": {"gradient_accumulation_kwargs": {"sync_each_batch": True}}}))
    assert est["per_gpu_bytes"] == per_gpu(
        **A100X4, strategy="fsdp-full", offload_optimizer="cpu", offload_param="cpu", checkpointing="full",
        sync_each_batch=True, loss="fused-linear", precision="bf16", micro_batch=1, global_batch=1 * 2 * 4,
        seq_len=2048)
    assert set(skipped) == {"label_smoothing_factor", "(model loading)", "fsdp_config.backward_prefetch"}
    assert est["may_be_low"]


def test_trl_sft_defaults_and_dora(capsys, tmp_path):
    """TRL 1.16 `trl sft --config`: SFTConfig turns gradient checkpointing and bf16 on and cuts at max_length
    1024 when the file is silent; ModelConfig's use_bnb_nested_quant defaults to false; activation_offloading;
    use_dora is not modelled."""
    est, skipped = check(capsys, tmp_path, "sft_qlora.yaml", """\
        model_name_or_path: meta-llama/Llama-2-7b-hf
        dtype: bfloat16
        dataset_name: trl-lib/Capybara
        use_peft: true
        use_dora: true
        lora_r: 32
        lora_alpha: 16
        lora_dropout: 0.0
        lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
        load_in_4bit: true
        per_device_train_batch_size: 4
        gradient_accumulation_steps: 2
        activation_offloading: true
        output_dir: Llama-2-7b-SFT
        """)
    assert est["per_gpu_bytes"] == per_gpu(
        **A100X4, strategy="ddp", method="qlora", lora_rank=32, lora_dropout=0.0,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), double_quant=False, checkpointing="full",
        offload_activations=True, precision="bf16", micro_batch=4, global_batch=4 * 2 * 4, seq_len=1024,
        loss="trl-head",   # TRL's SFTTrainer always runs its own tiled fused LM head
        batch_lengths="variable")   # packing and padding_free default false: each batch padded to its longest
    assert "use_dora" in skipped and est["may_be_low"]


def test_deepspeed_json_sizes_and_blocks(capsys, tmp_path):
    """DeepSpeed 0.19.8 zero_optimization: stage, offload_optimizer, sub_group_size are read; a max_live above
    both presets and fp32 gradient communication are named (they raise memory), activation_checkpointing too
    (HF models checkpoint with torch.utils.checkpoint: --checkpointing)."""
    est, skipped = check(capsys, tmp_path, "ds_config.json", json.dumps({
        "train_batch_size": 32, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
        "bf16": {"enabled": True}, "communication_data_type": "fp32",
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}},
        "activation_checkpointing": {"partition_activations": False, "cpu_checkpointing": True},
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                              "overlap_comm": True, "sub_group_size": 1e8, "stage3_max_live_parameters": 3e9}}),
        *HW, "--checkpointing", "full")
    assert est["per_gpu_bytes"] == per_gpu(
        **A100X4, strategy="zero3", offload_optimizer="cpu", sub_group_size=100_000_000, bucket_sizes="default",
        precision="bf16", micro_batch=2, global_batch=32, checkpointing="full", seq_len=2048)
    assert set(skipped) == {"zero_optimization.stage3_max_live_parameters", "communication_data_type",
                            "activation_checkpointing"}
    assert "may be low" in est["message"]


def test_accelerate_fsdp_yaml_checkpoints_and_offloads(capsys, tmp_path):
    """accelerate 1.15 FSDP YAML: fsdp_activation_checkpointing checkpoints every wrapped layer, fsdp_offload_params
    offloads parameters, gradients and optimizer; fsdp_forward_prefetch holds one more layer (named)."""
    est, skipped = check(capsys, tmp_path, "fsdp_config.yaml", """\
        compute_environment: LOCAL_MACHINE
        debug: false
        distributed_type: FSDP
        downcast_bf16: 'no'
        fsdp_config:
          fsdp_activation_checkpointing: true
          fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
          fsdp_backward_prefetch: BACKWARD_PRE
          fsdp_cpu_ram_efficient_loading: true
          fsdp_forward_prefetch: true
          fsdp_offload_params: true
          fsdp_sharding_strategy: FULL_SHARD
          fsdp_state_dict_type: SHARDED_STATE_DICT
          fsdp_sync_module_states: true
          fsdp_use_orig_params: true
        machine_rank: 0
        main_training_function: main
        mixed_precision: bf16
        num_machines: 1
        num_processes: 4
        rdzv_backend: static
        same_network: true
        use_cpu: false
        """)
    assert est["per_gpu_bytes"] == per_gpu(**A100X4, strategy="fsdp-full", offload_optimizer="cpu",
                                           offload_param="cpu", checkpointing="full", precision="bf16",
                                           micro_batch=1, seq_len=2048)
    assert set(skipped) == {"fsdp_config.fsdp_forward_prefetch"} and est["may_be_low"]


def test_accelerate_inline_deepspeed_is_estimated(capsys, tmp_path):
    """accelerate's deepspeed_config block without a file (DeepSpeedPlugin: DeepSpeed's default bucket sizes):
    estimated like its JSON would be; nothing here raises memory, so the verdict has no caveat."""
    est, skipped = check(capsys, tmp_path, "ds_zero2.yaml", """\
        compute_environment: LOCAL_MACHINE
        deepspeed_config:
          gradient_accumulation_steps: 4
          gradient_clipping: 1.0
          offload_optimizer_device: cpu
          offload_param_device: none
          zero3_init_flag: false
          zero_stage: 2
        distributed_type: DEEPSPEED
        mixed_precision: bf16
        num_machines: 1
        num_processes: 4
        """, *HW, "--micro-batch", "2")
    assert est["per_gpu_bytes"] == per_gpu(**A100X4, strategy="zero2", offload_optimizer="cpu",
                                           bucket_sizes="default", precision="bf16", micro_batch=2,
                                           global_batch=2 * 4 * 4, seq_len=2048)
    assert skipped == {} and not est["may_be_low"] and "may be low" not in est["message"]


def cpu(**kw) -> int:
    return estimate("llama-2-7b", **kw).per_node_cpu.total


@pytest.mark.parametrize("line, save", [
    ("", "consolidated"),                                          # accelerate's FSDP1 default: FULL_STATE_DICT
    ("  fsdp_state_dict_type: FULL_STATE_DICT\n", "consolidated"),
    ("  fsdp_state_dict_type: SHARDED_STATE_DICT\n", "sharded"),
    ("  fsdp_version: 2\n", "sharded"),                            # FSDP2's default: SHARDED_STATE_DICT
])
def test_accelerate_fsdp_state_dict_type_is_the_checkpoint_save(capsys, tmp_path, line, save):
    """fsdp_state_dict_type (accelerate utils/dataclasses.py set_state_dict_type): FULL_STATE_DICT gathers the
    model, then the optimizer state, into rank 0's CPU RAM at each checkpoint; counted per node."""
    est, skipped = check(capsys, tmp_path, "fsdp.yaml", "distributed_type: FSDP\nmixed_precision: bf16\n"
                         "num_processes: 4\nfsdp_config:\n  fsdp_cpu_ram_efficient_loading: true\n" + line)
    version = 2 if "version" in line else 1
    assert est["per_node_cpu_bytes"] == cpu(**A100X4, strategy="fsdp-full", precision="bf16", seq_len=2048,
                                            fsdp_version=version, checkpoint_save=save)
    assert "fsdp_config.fsdp_state_dict_type" not in skipped


@pytest.mark.parametrize("gather, save", [("true", "consolidated"), ("false", "sharded"), (None, "sharded")])
def test_deepspeed_zero3_gather_on_save_is_the_checkpoint_save(capsys, tmp_path, gather, save):
    """stage3_gather_16bit_weights_on_model_save: true consolidates the 16-bit model on rank 0's CPU; DeepSpeed's
    default is false (runtime/zero/config.py)."""
    key = f', "stage3_gather_16bit_weights_on_model_save": {gather}' if gather else ""
    est, _ = check(capsys, tmp_path, "ds.json", '{"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": true}, '
                   '"zero_optimization": {"stage": 3' + key + '}}', *HW, "--cpu-ram", "512")
    assert est["per_node_cpu_bytes"] == cpu(**A100X4, strategy="zero3", precision="bf16", seq_len=2048,
                                            bucket_sizes="default", cpu_ram=512, checkpoint_save=save)


@pytest.mark.parametrize("kind", ["llamafactory", "axolotl", "hf-trainer", "trl"])
def test_the_key_table_names_real_keys(kind):
    """advisor/data/check_keys.yaml: every key it reads or names as not counted is a key of the framework (its
    argument classes), so a misspelt entry cannot hide a key."""
    from advisor.render.frameworks.lint import _known_keys
    from advisor.render.read_keys import tables

    known, _ = _known_keys(kind)
    t = tables()[kind]
    extra = {"max_seq_length", "torch_dtype"}      # dsadvise's hf_model_args.yaml, older TRL's ModelConfig
    top = [k for k in (*t["read"], *t["not_counted"]) if "." not in k]     # fsdp_config.<key>: a block's keys
    assert top and [k for k in top if k not in known | extra] == []


def test_the_command_check_prints_gives_the_same_estimate(capsys, tmp_path):
    """The `dsadvise estimate` line check prints, run as it is, gives the bytes of check's verdict."""
    import shlex

    est, _ = check(capsys, tmp_path, "ds_config.json", json.dumps({
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "fp16": {"enabled": True},
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8}}))
    words = shlex.split(est["command"])
    assert words[:2] == ["dsadvise", "estimate"]
    main([*words[1:], "--json"])
    assert json.loads(capsys.readouterr().out)["per_gpu"]["total"] == est["per_gpu_bytes"]



@pytest.mark.parametrize("kind,keys,ckpt", [
    ("hf-trainer", "activation_checkpointing: true", "full"),          # transformers 5's name
    ("hf-trainer", "gradient_checkpointing: true", "full"),            # its deprecated alias
    ("trl", "max_length: 2048", "full"),                               # SFTConfig: on when not given
    ("trl", "max_length: 2048\nactivation_checkpointing: false", "none"),   # the new name wins over the alias
])
def test_checkpointing_by_either_name(capsys, tmp_path, kind, keys, ckpt):
    """transformers 5.24 TrainingArguments.__post_init__: activation_checkpointing, else gradient_checkpointing."""
    head = "dataset_name: trl-lib/Capybara\n" if kind == "trl" else ""
    est, _ = check(capsys, tmp_path, "args.yaml", head + "output_dir: out\nper_device_train_batch_size: 1\n"
                   "gradient_accumulation_steps: 1\nbf16: true\n" + keys + "\n")
    assert est["per_gpu_bytes"] == per_gpu(**A100X4, strategy="ddp", checkpointing=ckpt, precision="bf16",
                                           micro_batch=1, seq_len=2048, loss="trl-head" if kind == "trl" else None)
