"""Every rendered file parses, validates against the shipped schemas, and loads in the real engines:
accelerate's launch-time processing of the YAML and DeepSpeedConfig for the target world size. The
estimate and the config agree (bucket sizes), and the launch scripts' environment is accelerate's own."""

from __future__ import annotations

import json

import pytest
import yaml

from advisor.render.validate import errors_of, validate_files

from .conftest import SCENARIOS, parse_generate


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_files_validate_and_load_in_both_engines(rendered, scenario):
    files = rendered[scenario]
    steps = validate_files(files, engines=True)
    assert not errors_of(steps), [f.line() for f in errors_of(steps)]
    # the engines ran: a skipped step (accelerate or DeepSpeed not importable) is a failure here
    assert [s.status for s in steps] == ["pass"] * len(steps), [(s.name, s.status, s.detail) for s in steps]
    names = [s.name for s in steps]
    assert names[:3] == ["parse", "schema", "accelerate loads accelerate_config.yaml"]
    acc = yaml.safe_load(files["accelerate_config.yaml"])
    if "ds_config.json" in files:
        assert any(n.startswith("DeepSpeed loads ds_config.json (world size %d)" % acc["num_processes"]) for n in names)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_world_size_and_batch_arithmetic(rendered, scenario):
    args = parse_generate(SCENARIOS[scenario])
    files = rendered[scenario]
    acc = yaml.safe_load(files["accelerate_config.yaml"])
    world = args.gpus * args.nodes
    assert acc["num_processes"] == world and acc["num_machines"] == args.nodes
    if args.nodes > 1:
        assert acc["main_process_ip"] == args.main_process_ip and "hostfile" in files and "slurm.sbatch" in files
    if "ds_config.json" in files and not args.hf_trainer:
        ds = json.loads(files["ds_config.json"])
        assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
        assert "mixed_precision" not in acc      # accelerate refuses it next to deepspeed_config_file


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if "fsdp" not in s and "single" not in s])
def test_bucket_sizes_are_the_estimators(rendered, scenario):
    """The JSON carries exactly the bucket sizes the memory estimate assumed (advisor.memory.buffers)."""
    from advisor.memory.buffers import deepspeed_sizes
    from advisor.cli.configs import plan

    model, hw, training, strategy, gas, _ = plan(parse_generate(SCENARIOS[scenario]))
    d = deepspeed_sizes(model.architecture, strategy)
    z = json.loads(rendered[scenario]["ds_config.json"])["zero_optimization"]
    assert z["stage"] == strategy.zero_stage
    assert z["reduce_bucket_size"] == d.reduce_bucket_size
    assert z["overlap_comm"] == d.overlap_comm
    if strategy.zero_stage == 3:
        assert z["stage3_prefetch_bucket_size"] == d.prefetch_bucket_size
        assert z["stage3_param_persistence_threshold"] == d.param_persistence_threshold
        assert z["stage3_max_live_parameters"] == d.max_live_parameters
        assert z["sub_group_size"] == d.sub_group_size
    else:
        assert z["allgather_bucket_size"] == d.allgather_bucket_size
    assert (z.get("offload_optimizer") or {}).get("device", "none") == strategy.offload_optimizer


@pytest.mark.parametrize("scenario", ["7b-4x24gib-zero3", "llama-2-7b-8xa100-80g-fsdp-full", "gpt2-single-gpu",
                                      "13b-2x8xa100-40g-zero3", "qwen3-30b-a3b-8xh100-zero3"])
def test_launch_env_is_what_accelerate_launch_sets(rendered, scenario, tmp_path):
    """launch_torchrun.sh / launch_deepspeed.sh export the environment accelerate launch gives each process."""
    from advisor.render.validate import load_accelerate

    files = rendered[scenario]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    loaded = load_accelerate(tmp_path / "accelerate_config.yaml")
    exported = {}
    for line in files["launch_torchrun.sh"].splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            exported[key] = value.replace('"$HERE/', str(tmp_path) + "/").strip('"')
    assert exported
    for key, value in exported.items():
        assert loaded.env.get(key, "").lower() == value.lower(), key


def test_schema_knows_every_accelerate_config_key():
    """The YAML schema lists every field of the installed accelerate's ClusterConfig and launch options."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    from advisor.datafiles import load_data

    schema = load_data("schemas/accelerate_config.schema.json")
    assert set(ClusterConfig.__dataclass_fields__) <= set(schema["properties"])
    dests = {a.dest for a in launch_command_parser()._actions}
    fsdp = set(schema["$defs"]["fsdp_config"]["properties"])
    assert {d for d in dests if d.startswith("fsdp_")} <= fsdp
    ds = set(schema["$defs"]["deepspeed_config"]["properties"])
    assert {d for d in dests if d.startswith(("deepspeed_", "zero", "offload_"))} <= ds


def test_schema_rejects_what_accelerate_rejects():
    from advisor.render.validate import schema_findings

    bad = {"distributed_type": "DEEPSPEED", "num_processes": 0, "bogus": 1}
    found = {(f.setting, f.severity) for f in schema_findings("accelerate", bad, "x.yaml")}
    assert ("num_processes", "error") in found
    assert ("", "error") in found           # unknown top-level key and missing deepspeed_config


def test_yaml_no_is_quoted(rendered):
    """YAML 1.1 reads a bare NO as false: accelerate config writes 'NO' and so do we."""
    text = rendered["gpt2-single-gpu"]["accelerate_config.yaml"]
    assert "distributed_type: 'NO'" in text
    assert yaml.safe_load(text)["distributed_type"] == "NO"


def test_deepspeed_world_size_from_the_config_not_the_process(rendered):
    """DeepSpeedConfig is checked for the target world size (8 here), not this single process."""
    from advisor.render.validate import EngineError, load_deepspeed

    ds = json.loads(rendered["llama-2-7b-8xa100-80g-zero2"]["ds_config.json"])
    assert load_deepspeed(ds, 8).world_size == 8
    with pytest.raises(EngineError, match=r"64 != 1 \* 8 \* 4"):
        load_deepspeed(ds, 4)


def test_validation_does_not_depend_on_local_ports(rendered):
    """accelerate refuses a busy main_process_port at launch; a static check must not care about this machine."""
    import socket

    acc = yaml.safe_load(rendered["13b-2x8xa100-40g-zero3"]["accelerate_config.yaml"])
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", acc["main_process_port"]))
            s.listen()
        except OSError:
            pass   # already busy: the point stands
        steps = validate_files(rendered["13b-2x8xa100-40g-zero3"], engines=True)
    assert not errors_of(steps), [f.line() for f in errors_of(steps)]
