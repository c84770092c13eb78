"""Issue 15 render / check / dry-run: the files of tensor, sequence and context parallel layouts and FSDP2 carry
the keys the pinned engines read, load in them (accelerate's launch processing + ParallelismConfig, DeepSpeedConfig),
`check` names each violated cross-constraint in one line, and one layout really runs on the CPU.
The other layouts' real launches (4 processes each) are in benchmarks/parallel_dryrun.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from advisor.render.lint import Problem, lint_file
from advisor.render.validate import errors_of, load_accelerate, validate_files

from .conftest import LAYOUT_SCENARIOS, render_scenario

GOLDEN = Path(__file__).with_name("golden")
PC = "parallelism_config_"


def files_of(rendered_layouts, name):
    f = rendered_layouts[name]
    acc = yaml.safe_load(f["accelerate_config.yaml"])
    ds = json.loads(f["ds_config.json"]) if "ds_config.json" in f else None
    return f, acc, ds


@pytest.mark.parametrize("scenario", list(LAYOUT_SCENARIOS))
def test_layout_files_load_in_both_engines(rendered_layouts, scenario):
    steps = validate_files(rendered_layouts[scenario], engines=True)
    assert not errors_of(steps), [f.line() for f in errors_of(steps)]
    assert [s.status for s in steps] == ["pass"] * len(steps), [(s.name, s.status, s.detail) for s in steps]
    acc = yaml.safe_load(rendered_layouts[scenario]["accelerate_config.yaml"])
    if "parallelism_config" in acc:     # accelerate built its ParallelismConfig from the launch environment
        assert "ParallelismConfig dp_replicate" in steps[2].detail, steps[2].detail


def test_sp_zero3_keys(rendered_layouts):
    _, acc, ds = files_of(rendered_layouts, "llama-3.1-70b-8xh100-32k-sp8-zero3")
    pc = acc["parallelism_config"]
    assert pc[PC + "sp_size"] == 8 and pc[PC + "sp_backend"] == "deepspeed"
    assert pc[PC + "sp_attn_implementation"] == "flash_attention_2"          # --attention flash
    assert pc[PC + "dp_shard_size"] == 1 and pc[PC + "tp_size"] == 1          # 8 GPUs / sp 8 = 1 data-parallel rank
    assert acc["distributed_type"] == "DEEPSPEED" and ds["zero_optimization"]["stage"] == 3
    assert ds["sequence_parallel_size"] == 8
    assert ds["train_batch_size"] == 1          # micro 1 x accumulation 1 x (8 GPUs / sp 8)
    assert "tensor_parallel" not in ds


def test_autotp_keys(rendered_layouts):
    _, acc, ds = files_of(rendered_layouts, "llama-3.1-70b-8xh100-autotp8-zero1")
    assert ds["tensor_parallel"] == {"autotp_size": 8}
    assert ds["train_batch_size"] == 8          # DeepSpeedConfig counts all 8 ranks before AutoTP builds its groups
    assert "parallelism_config" not in acc and "sequence_parallel_size" not in ds


def test_fsdp2_tp_keys(rendered_layouts):
    _, acc, _ = files_of(rendered_layouts, "llama-3.1-70b-8xh100-fsdp2-tp2")
    fc, pc = acc["fsdp_config"], acc["parallelism_config"]
    assert fc["fsdp_version"] == 2 and fc["fsdp_reshard_after_forward"] is True
    # FSDP1-only keys are absent (accelerate ignores or refuses them under FSDP2)
    assert not {"fsdp_sharding_strategy", "fsdp_backward_prefetch", "fsdp_use_orig_params", "fsdp_sync_module_states",
                "fsdp_forward_prefetch"} & set(fc)
    assert (pc[PC + "dp_replicate_size"], pc[PC + "dp_shard_size"], pc[PC + "tp_size"], pc[PC + "cp_size"]) == (1, 4, 2, 1)


def test_fsdp2_cp_and_hsdp_keys(rendered_layouts):
    _, acc, _ = files_of(rendered_layouts, "llama-3.1-8b-8xh100-64k-fsdp2-cp4")
    pc = acc["parallelism_config"]
    assert (pc[PC + "dp_shard_size"], pc[PC + "cp_size"], pc[PC + "cp_comm_strategy"]) == (2, 4, "allgather")
    _, acc, _ = files_of(rendered_layouts, "llama-3.1-70b-2x8xh100-hsdp")
    pc = acc["parallelism_config"]
    assert (pc[PC + "dp_replicate_size"], pc[PC + "dp_shard_size"], acc["num_processes"]) == (2, 8, 16)


@pytest.mark.parametrize("scenario", list(LAYOUT_SCENARIOS))
def test_layout_launch_env_is_what_accelerate_launch_sets(rendered_layouts, scenario, tmp_path):
    files = rendered_layouts[scenario]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    loaded = load_accelerate(tmp_path / "accelerate_config.yaml")
    exported = {}
    for line in files["launch_torchrun.sh"].splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            exported[key] = value.replace('"$HERE/', str(tmp_path) + "/").strip('"').strip("'")
    want = {k for k in loaded.env if k.startswith("PARALLELISM_CONFIG_") or k == "ACCELERATE_USE_PARALLELISM_CONFIG"}
    assert want <= set(exported)
    for key, value in exported.items():
        assert loaded.env.get(key, "").lower() == value.lower(), key


def test_readme_says_the_script_changes(rendered_layouts):
    sp = rendered_layouts["llama-3.1-70b-8xh100-32k-sp8-zero3"]["README.md"]
    assert "UlyssesSPAttentionHF" in sp and "shift_labels" in sp and "TiledMLP" in sp
    assert "8 data-parallel rank" not in sp and "x 1 data-parallel rank(s)" in sp
    tp = rendered_layouts["llama-3.1-70b-8xh100-fsdp2-tp2"]["README.md"]
    assert 'tp_plan=\\"auto\\"' in tp or 'tp_plan="auto"' in tp
    assert "ReplicateParallel" in tp        # the accelerate 1.15 / transformers 5.24 incompatibility is said
    cp = rendered_layouts["llama-3.1-8b-8xh100-64k-fsdp2-cp4"]["README.md"]
    assert "maybe_context_parallel" in cp


def test_deepspeed_tp_with_sp_is_refused_in_one_line():
    from advisor.errors import InputError

    with pytest.raises(InputError) as exc:
        render_scenario("--model llama-3.1-8b --gpus 8 --gpu h100-sxm --strategy zero1 --tp 2 --sp 2")
    assert exc.value.field == "--sp" and "\n" not in str(exc.value)


# ---------------------------------------------------------------- check

def _lint(tmp_path, name, data, *, model="llama-3.1-70b", gpus=None, engines=False, extra=None):
    for n, d in (extra or {}).items():
        (tmp_path / n).write_text(json.dumps(d))
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return lint_file(path, Problem(model=model, gpus=gpus, engines=engines))


def _by_key(findings):
    return {(f.severity, f.setting) for f in findings}


def test_check_parallelism_block_cross_constraints(tmp_path):
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "bf16",
           "num_machines": 1, "num_processes": 8, "fsdp_config": {"fsdp_version": 1},
           "parallelism_config": {PC + "dp_shard_size": 2, PC + "cp_size": 2, "tp_size": 4}}
    found = _lint(tmp_path, "a.yaml", acc)
    keys = _by_key(found)
    assert ("error", f"parallelism_config.{PC}cp_size") in keys            # cp without FSDP2
    assert ("error", "fsdp_config.fsdp_version") in keys                   # ParallelismConfig needs FSDP2
    assert ("error", "parallelism_config") in keys                         # 2 x 2 = 4 != num_processes 8
    assert ("warning", "parallelism_config.tp_size") in keys               # accelerate reads only parallelism_config_*
    assert all("\n" not in f.message for f in found)


def test_check_tp_must_divide_heads_and_fsdp2_keys(tmp_path):
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "bf16",
           "num_machines": 1, "num_processes": 6,
           "fsdp_config": {"fsdp_version": 2, "fsdp_sharding_strategy": "SHARD_GRAD_OP",
                           "fsdp_reshard_after_forward": "FULL_SHARD"},
           "parallelism_config": {PC + "dp_shard_size": 2, PC + "tp_size": 3}}
    keys = _by_key(_lint(tmp_path, "b.yaml", acc))
    assert ("error", f"parallelism_config.{PC}tp_size") in keys            # 3 does not divide 64 heads / 8 kv heads
    assert ("error", "fsdp_config.fsdp_reshard_after_forward") in keys     # FSDP2 takes a bool
    assert ("warning", "fsdp_config.fsdp_sharding_strategy") in keys       # ignored under FSDP2
    assert ("error", "parallelism_config") not in keys                     # 2 x 3 = 6 processes is right


def test_check_sp_backend_and_batch_world(tmp_path):
    ds = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}, "sequence_parallel_size": 8}
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_machines": 1,
           "num_processes": 16, "deepspeed_config": {"deepspeed_config_file": "ds.json"},
           "parallelism_config": {PC + "sp_size": 8, PC + "sp_backend": "megatron"}}
    found = _lint(tmp_path, "c.yaml", acc, extra={"ds.json": ds})
    keys = _by_key(found)
    assert ("error", f"parallelism_config.{PC}sp_backend") in keys
    assert ("error", f"parallelism_config.{PC}dp_shard_size") in keys      # 1 != 16 / 8 data-parallel ranks
    batch = [f for f in found if f.setting == "train_batch_size"]
    assert batch and "16 from num_processes" in batch[0].message and "= 2" in batch[0].message


def test_check_sp_without_deepspeed_and_autotp_rules(tmp_path):
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "bf16",
           "num_machines": 1, "num_processes": 4, "fsdp_config": {"fsdp_version": 2},
           "parallelism_config": {PC + "dp_shard_size": 2, PC + "sp_size": 2}}
    assert ("error", f"parallelism_config.{PC}sp_size") in _by_key(_lint(tmp_path, "e.yaml", acc))
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 1}, "tensor_parallel": {"autotp_size": 3}, "sequence_parallel_size": 2}
    keys = _by_key(_lint(tmp_path, "d.json", ds, gpus=8))
    assert ("error", "tensor_parallel.autotp_size") in keys                # 3 divides neither 8 GPUs nor 64 heads
    assert ("error", "sequence_parallel_size") in keys                     # AutoTP and Ulysses in one job
    ds = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3}, "tensor_parallel": {"autotp_size": 16}}
    found = _lint(tmp_path, "f.json", ds, gpus=16)
    assert ("warning", "tensor_parallel.autotp_size") in _by_key(found)   # 16 > 8 kv heads
    assert not [f for f in found if f.severity == "error"], [f.line() for f in found]   # ZeRO-3 + AutoTP is fine


def test_check_autotp_zero3_follows_the_installed_engine(tmp_path, monkeypatch):
    """ZeRO-3 + AutoTP: accepted by the installed DeepSpeed (0.19.8 has no assertion against it); an engine whose
    _configure_tensor_parallel_states still asserts against zero_stage = 3 (releases before it, DeepSpeed issue
    #7389) makes it an error. The older engine is not installable next to 0.19.8, so its source line is given."""
    import inspect

    from advisor.render import lint_parallel

    assert lint_parallel._autotp_stage_supported(3)
    real = inspect.getsource
    old = ("def _configure_tensor_parallel_states(self, model):\n    assert self.zero_optimization_stage() != 3, "
           "'Currently, the compatibility between autotp and zero_stage = 3 has been validated'\n")
    monkeypatch.setattr(inspect, "getsource", lambda obj: old if getattr(obj, "__name__", "") ==
                        "_configure_tensor_parallel_states" else real(obj))
    ds = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3}, "tensor_parallel": {"autotp_size": 2}}
    found = _lint(tmp_path, "z3.json", ds, gpus=8)
    assert ("error", "tensor_parallel.autotp_size") in _by_key(found)
    assert lint_parallel._autotp_stage_supported(1)


def test_check_engine_verdict_on_total_size(tmp_path):
    """accelerate's own ParallelismConfig check (built from the launch environment) refuses a wrong product."""
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP", "mixed_precision": "bf16",
           "num_machines": 1, "num_processes": 8, "fsdp_config": {"fsdp_version": 2},
           "parallelism_config": {PC + "dp_shard_size": 2, PC + "tp_size": 2}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(acc))
    from advisor.render.validate import EngineError

    with pytest.raises(EngineError) as exc:
        load_accelerate(tmp_path / "g.yaml")
    assert exc.value.setting == "parallelism_config" and "does not match num_processes" in exc.value.message


def test_generated_layouts_pass_their_own_check(tmp_path, rendered_layouts):
    for scenario in ("llama-3.1-70b-8xh100-32k-sp8-zero3", "llama-3.1-70b-8xh100-fsdp2-tp2"):
        folder = tmp_path / scenario
        folder.mkdir()
        for name, text in rendered_layouts[scenario].items():
            (folder / name).write_text(text)
        found = lint_file(folder / "accelerate_config.yaml", Problem(model="llama-3.1-70b", engines=False))
        assert not [f for f in found if f.severity in ("error", "warning")], [f.line() for f in found]


# ---------------------------------------------------------------- dry-run

def test_proxy_layout_keeps_each_dimension_at_two():
    from advisor.render.dryrun import proxy_layout

    base = {"fsdp_version": 2, "dp_replicate": 1, "dp_shard": 4, "tp": 2, "cp": 1, "sp": 1, "autotp": None,
            "sp_attn": "sdpa"}
    lay, procs, changed = proxy_layout(base)
    assert (lay["dp_shard"], lay["tp"], procs) == (2, 2, 4) and changed == ["dp_shard 4 -> 2"]
    lay, procs, _ = proxy_layout({**base, "dp_shard": 2, "tp": 1, "cp": 4})
    assert (lay["cp"], procs) == (2, 4)
    lay, procs, changed = proxy_layout({**base, "fsdp_version": 1, "tp": 1, "dp_shard": 1, "sp": 8,
                                        "sp_attn": "flash_attention_2"})
    assert (lay["sp"], lay["sp_attn"], procs) == (2, "sdpa", 2) and any("sdpa" in c for c in changed)
    lay, procs, _ = proxy_layout({**base, "fsdp_version": 1, "tp": 1, "autotp": 8})
    assert (lay["autotp"], procs) == (2, 2)


def test_file_layout_reads_what_the_files_ask_for(rendered_layouts):
    from advisor.render.dryrun import file_layout

    _, acc, ds = files_of(rendered_layouts, "llama-3.1-70b-8xh100-32k-sp8-zero3")
    lay = file_layout(acc, ds)
    assert (lay["sp"], lay["autotp"], lay["sp_attn"], lay["block"]) == (8, None, "flash_attention_2", True)
    _, acc, ds = files_of(rendered_layouts, "llama-3.1-70b-8xh100-autotp8-zero1")
    assert file_layout(acc, ds)["autotp"] == 8
    _, acc, _ = files_of(rendered_layouts, "llama-3.1-70b-2x8xh100-hsdp")
    lay = file_layout(acc, None)
    assert (lay["fsdp_version"], lay["dp_replicate"], lay["dp_shard"]) == (2, 2, 8)
    plain = {"distributed_type": "FSDP", "num_processes": 8, "fsdp_config": {"fsdp_version": 2}}
    assert file_layout(plain, None)["block"] is False and file_layout(plain, None)["dp_shard"] == 8
    assert file_layout({"distributed_type": "DEEPSPEED"}, {"zero_optimization": {"stage": 2}}) is None


@pytest.mark.slow
def test_ulysses_sp_runs_on_cpu_and_splits_the_sequence(tmp_path, capsys, monkeypatch):
    """One real launch (2 processes, gloo): accelerate + DeepSpeed Ulysses on the SP golden; inside the run the
    SP group, the wrapped dataloader, the registered attention and the sequence split (32 -> 16 tokens) are checked."""
    from advisor.cli import main

    # DeepSpeed prints its accelerator auto-detection warning to stdout on first import unless this is set
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")

    dest = tmp_path / "sp"
    shutil.copytree(GOLDEN / "llama-3.1-70b-8xh100-32k-sp8-zero3", dest)
    rc = main(["dry-run", str(dest), "--json"])
    report = json.loads(capsys.readouterr().out)
    launch = next(s for s in report["steps"] if s["step"].startswith("launch"))
    assert rc == 0 and launch["status"] == "pass", launch
    for needle in ("Ulysses sequence-parallel group size = 2", "sequence split: tokens per rank = 16",
                   "ZeRO stage (engine.zero_optimization_stage()) = 3", "optimizer steps taken = 2"):
        assert needle in launch["detail"], launch["detail"]
    assert "sp 8 -> 2" in report["overrides"]
