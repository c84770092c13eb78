"""``generate --task infer``: which layouts are written, that every file parses, what the scripts carry (the
plan's batch, max_memory, the pitfalls), goldens, and that accelerate's own placement of the real model under
the rendered MAX_MEMORY keeps every module on a GPU.

Goldens: tests/render/golden/infer-*/ (rewrite with DSADVISE_UPDATE_GOLDENS=1). Figures that come from the
memory estimate (sizes, batch sizes, speeds) are masked in the comparison: the estimator's own tests own them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("DSADVISE_UPDATE_GOLDENS") == "1"

INFER_SCENARIOS = {
    # both fit: the 7B on two 24 GiB GPUs at 512 tokens
    "infer-llama-2-7b-2x24gib": "--model llama-2-7b --gpus 2 --vram 24 --task infer --seq-len 512 --prompt-len 384",
    # only the layer split fits: 70B on 4 x A100-80G
    "infer-llama-2-70b-4xa100-80g": "--model llama-2-70b --gpus 4 --gpu a100-80g --task infer",
    # one GPU: replicas only (device_map over one GPU is the same thing)
    "infer-gpt2-1gpu": "--model gpt2 --gpus 1 --vram 24 --task infer --seq-len 1024 --prompt-len 768",
}

_MASKS = [
    (re.compile(r"\d[\d,]*(\.\d+)? (GiB|MiB|KiB|B)\b"), "<size>"),
    (re.compile(r"\b\d+MiB\b"), "<size>"),
    (re.compile(r"(BATCH_SIZE = |batch |search's |per_device_eval_batch_size |batch_size\": )\d+", re.I), r"\1<n>"),
    (re.compile(r"\| (yes|no) \| \d+ \|"), r"| \1 | <n> |"),
    (re.compile(r"\| [\d,]+ \|$", re.M), "| <n> |"),
    (re.compile(r"\"(weights|kv_cache|transient|overhead|total|max_memory_bytes|usable_bytes|"
                r"prefill_tokens_per_second)\": [\d.e+]+"), r'"\1": <n>'),
    (re.compile(r"\"dsadvise_version\": \"[^\"]*\""), '"dsadvise_version": "<v>"'),
    (re.compile(r"dsadvise \d+\.\d+\.\d+[\w.+-]*"), "dsadvise <v>"),
]


def masked(text: str) -> str:
    for rx, rep in _MASKS:
        text = rx.sub(rep, text)
    return text


def parse(argv: str, out: str = "/nonexistent"):
    from advisor.cli import build_parser

    return build_parser().parse_args(["generate", *shlex.split(argv), "--out", out])


def render(argv: str) -> dict[str, str]:
    from advisor.cli.infer import plan_infer
    from advisor.render.infer_render import render_infer_files

    args = parse(argv)
    model, hw, plan = plan_infer(args)
    return render_infer_files(plan, model, hw, model_arg=args.model, main_process_port=args.main_process_port)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {name: render(argv) for name, argv in INFER_SCENARIOS.items()}


@pytest.mark.parametrize("scenario", list(INFER_SCENARIOS))
def test_infer_golden(rendered, scenario):
    files = {n: masked(t) for n, t in rendered[scenario].items()}
    folder = GOLDEN / scenario
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.name not in files:
                old.unlink()
        for name, text in files.items():
            (folder / name).write_bytes(text.encode("utf-8"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), "rendered file set changed"
    for name, text in files.items():
        assert text.encode("utf-8") == (folder / name).read_bytes(), f"{scenario}/{name} differs from the golden file"


def test_layouts_written_are_those_that_fit(rendered):
    both, split_only, one_gpu = (rendered[k] for k in INFER_SCENARIOS)
    assert {"infer_device_map.py", "launch_device_map.sh", "infer_replicas.py", "launch_replicas.sh"} <= set(both)
    assert "infer_device_map.py" in split_only and "infer_replicas.py" not in split_only
    assert "does not fit" in split_only["README.md"]          # the replica layout is said, not written
    assert "infer_replicas.py" in one_gpu and "infer_device_map.py" not in one_gpu


@pytest.mark.parametrize("scenario", list(INFER_SCENARIOS))
def test_every_file_parses(rendered, scenario):
    for name, text in rendered[scenario].items():
        if name.endswith(".py"):
            compile(text, name, "exec")
        elif name.endswith(".json"):
            json.loads(text)
        elif name.endswith(".sh"):
            r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
            assert r.returncode == 0, (name, r.stderr)


def _const(text: str, name: str):
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(name)


def test_scripts_carry_the_plan(rendered):
    files = rendered["infer-llama-2-7b-2x24gib"]
    plan = json.loads(files["dsadvise.json"])["plan"]
    dm = next(x for x in plan["layouts"] if x["layout"] == "device-map-auto")
    rp = next(x for x in plan["layouts"] if x["layout"] == "replica-per-gpu")
    script = files["infer_device_map.py"]
    assert _const(script, "MAX_MEMORY") == {0: f"{dm['max_memory_bytes'] // 2**20}MiB",
                                            1: f"{dm['max_memory_bytes'] // 2**20}MiB"}
    assert _const(script, "BATCH_SIZE") == dm["batch_size"]
    assert _const(files["infer_replicas.py"], "BATCH_SIZE") == rp["batch_size"]
    assert _const(script, "MODEL") == "meta-llama/Llama-2-7b-hf"
    assert (_const(script, "PROMPT_TOKENS"), _const(script, "MAX_NEW_TOKENS")) == (384, 128)
    # the budget leaves the KV cache, transient and overhead beside the weights, within the usable VRAM
    usable = plan["usable_bytes"]
    assert dm["max_memory_bytes"] + dm["kv_cache"] + dm["transient"] + dm["overhead"] <= usable
    assert dm["max_memory_bytes"] >= dm["weights"]
    launch = files["launch_replicas.sh"]
    assert "--num_processes 2" in launch and "--multi_gpu" in launch and "MAIN_PROCESS_PORT" in launch
    assert "llamafactory-cli train --stage sft --do_predict" in launch
    assert f"--per_device_eval_batch_size {rp['batch_size']}" in launch
    assert "CUDA_VISIBLE_DEVICES=0,1 llamafactory-cli chat" in files["launch_device_map.sh"]


def test_pitfalls_are_said(rendered):
    for files in rendered.values():
        readme = files["README.md"]
        for said in ("CUDA_VISIBLE_DEVICES=4,5,6,7", "address already in use", "HF_HUB_OFFLINE=1",
                     "not faster than one GPU"):
            assert said in readme
        for name in ("launch_device_map.sh", "launch_replicas.sh"):
            if name in files:
                assert "HF_HUB_OFFLINE" in files[name] and "PHYSICAL" in files[name]
    assert "NOT faster than one GPU" in rendered["infer-llama-2-70b-4xa100-80g"]["launch_device_map.sh"]


def test_real_model_placement_under_rendered_max_memory(rendered, tmp_path):
    """accelerate's infer_auto_device_map over llama-2-7b (meta device) with the rendered budgets: all on GPUs."""
    from advisor.render.infer_dryrun import placement_step
    from advisor.render.validate import StepStatus

    files = rendered["infer-llama-2-7b-2x24gib"]
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    step = placement_step(tmp_path, json.loads(files["dsadvise.json"]))
    assert step.status == StepStatus.PASS, step.findings
    assert "GPU(s) 0, 1 of 2" in step.detail
    # and a budget too small for the weights is caught by the same check
    small = files["infer_device_map.py"].replace(_const(files["infer_device_map.py"], "MAX_MEMORY")[0], "3000MiB")
    (tmp_path / "infer_device_map.py").write_text(small, encoding="utf-8")
    step = placement_step(tmp_path, json.loads(files["dsadvise.json"]))
    assert step.status == StepStatus.FAIL and "disk" in step.findings[0].message


def _cli(*argv: str):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "advisor", *argv], capture_output=True, text=True, env=env)


def test_cli_writes_and_refuses_what_cannot_launch(tmp_path):
    out = tmp_path / "out"
    r = _cli("generate", *shlex.split(INFER_SCENARIOS["infer-gpt2-1gpu"]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "launch_replicas.sh").stat().st_mode & 0o111
    assert "replica-per-gpu (recommended)" in r.stdout
    # nothing fits: one line, exit 3
    r = _cli("generate", "--model", "llama-2-70b", "--gpus", "1", "--vram", "24", "--task", "infer",
             "--out", str(tmp_path / "none"))
    assert r.returncode == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()
    # a training strategy with --task infer, and a prompt longer than the sequence: exit 2, one line
    r = _cli("generate", "--model", "gpt2", "--task", "infer", "--strategy", "zero3", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--strategy" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", "gpt2", "--vram", "24", "--task", "infer", "--seq-len", "512", "--prompt-len", "512",
             "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "--prompt-len" in r.stderr and "Traceback" not in r.stderr
