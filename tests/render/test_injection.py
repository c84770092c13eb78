"""Values from user input (model names, folder names of a config.json, NVMe paths, the rendezvous host) can
never change the structure of a rendered YAML, JSON, shell script or README: hostile strings go in, the
files parse to the same shape, and the value comes back out exactly where it belongs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.api import build_hardware, build_strategy, build_training
from advisor.catalog.models import ResolvedModel, resolve_model
from advisor.errors import InputError
from advisor.render.render import md, render_files, sh_quote, to_json, to_yaml

HOSTILE = ['a"b', "a'b", "line\nbreak", "key: value", "{{ 7*7 }}", "{% raw %}", "$(rm -rf /)", "`id`", "---",
           "...", "# comment", "- item", "&anchor *alias", "!!python/object:os.system", "a|b<script>", "\\",
           "\r\n", "\x00nul", "\u2028sep", "null", "no", "yes", "~", "[1, 2]", "{a: 1}", " lead", "trail ",
           "'; rm -rf / #", "\"\nexec x\n\"", "%s%n", "\t", "é\u202e", "<!-- estimate -->"]
TEXT = st.one_of(st.sampled_from(HOSTILE),
                 st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
                 st.lists(st.sampled_from(HOSTILE), min_size=2, max_size=4).map("".join))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _shape(obj):
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(v) for v in obj]
    return type(obj).__name__


def _render(name="llama-2-7b", nvme_path=None, strategy="zero3", ip="127.0.0.1", nodes=1, family=None):
    base = resolve_model("llama-2-7b")
    arch = base.architecture if family is None else base.architecture.model_copy(update={"family": family})
    model = ResolvedModel(name=name, architecture=arch, source="config", note="")
    hw = build_hardware(gpus=4, nodes=nodes, vram=80, nvme_path=nvme_path)
    training = build_training(hw, checkpointing="full")
    off = "nvme" if nvme_path is not None else "none"
    strat = build_strategy(hw, strategy, offload_optimizer=off, offload_param=off if strategy == "zero3" else "none")
    return render_files(model, hw, training, strat, gradient_accumulation_steps=1, main_process_ip=ip)


BENIGN = {}


def benign(**kw):
    key = tuple(sorted(kw.items()))
    if key not in BENIGN:
        BENIGN[key] = _render(**kw)
    return BENIGN[key]


def _assert_same_structure(files, ref):
    assert sorted(files) == sorted(ref)
    for name, text in files.items():
        if name.endswith(".yaml"):
            assert _shape(yaml.safe_load(text)) == _shape(yaml.safe_load(ref[name])), name
        elif name.endswith(".json"):
            assert _shape(json.loads(text)) == _shape(json.loads(ref[name])), name
        # Same number of lines everywhere: nothing broke out of its line.
        assert len(text.splitlines()) == len(ref[name].splitlines()), name


@SETTINGS
@given(TEXT)
def test_hostile_model_name(name):
    files = _render(name=name, nodes=2)
    _assert_same_structure(files, benign(nodes=2))
    assert json.loads(files["dsadvise.json"])["model"]["name"] == name
    for script in ("launch_accelerate.sh", "launch_deepspeed.sh", "launch_torchrun.sh", "slurm.sbatch"):
        assert files[script] == benign(nodes=2)[script].replace(
            "dsadvise-llama-2-7b", files["slurm.sbatch"].split("--job-name=")[1].split("\n")[0])
    job = files["slurm.sbatch"].split("--job-name=")[1].split("\n")[0]
    assert all(c.isalnum() or c in "._-" for c in job)
    readme = files["README.md"]
    assert readme.count("<!-- estimate -->") == 1 and readme.startswith("# ")


@SETTINGS
@given(TEXT)
def test_hostile_nvme_path(path):
    files = _render(nvme_path=path)
    _assert_same_structure(files, benign(nvme_path="/local_nvme"))
    z = json.loads(files["ds_config.json"])["zero_optimization"]
    assert z["offload_optimizer"]["nvme_path"] == path
    assert z["offload_param"]["nvme_path"] == path
    assert json.loads(files["dsadvise.json"])["hardware"]["nvme_path"] == path


@SETTINGS
@given(TEXT)
def test_hostile_family_has_no_layer_class(family):
    files = _render(family=family, strategy="fsdp-full")
    acc = yaml.safe_load(files["accelerate_config.yaml"])
    assert "fsdp_transformer_layer_cls_to_wrap" not in acc["fsdp_config"]
    assert acc["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.parametrize("ip", [s for s in HOSTILE if not s.isalnum()] + ["10.0.0.1 ; id", "host name", "-oProxy=x",
                                                                         "a..b", ""])
def test_hostile_host_is_refused(ip):
    with pytest.raises(InputError, match="--main-process-ip"):
        _render(ip=ip, nodes=2)


@pytest.mark.parametrize("ip", ["10.0.0.1", "node-0.cluster.local", "fe80::1", "[::1]", "no", "null", "yes"])
def test_valid_hosts_render_exactly(ip):
    files = _render(ip=ip, nodes=2)
    assert yaml.safe_load(files["accelerate_config.yaml"])["main_process_ip"] == ip
    assert f"MAIN_PROCESS_IP={sh_quote(ip)}" in files["launch_accelerate.sh"]


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_yaml_filter_round_trips_on_one_line(value):
    text = to_yaml(value)
    assert "\n" not in text
    assert yaml.safe_load(f"key: {text}\nother: 1\n") == {"key": value, "other": 1}


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_json_and_shell_filters_round_trip(value):
    assert json.loads(f'{{"k": {to_json(value)}}}') == {"k": value}
    if "\x00" not in value:
        assert shlex.split(f"cmd {sh_quote(value)} end") == ["cmd", value, "end"]
    cell = md(value)
    assert "\n" not in cell and "\r" not in cell and "|" not in cell.replace("\\|", "")
    # no HTML can start: every < is backslash-escaped (backslashes of the value itself are doubled), and no
    # HTML entity stands in for it (the README reads the same as plain text)
    assert cell.count("<") == cell.count("\\<") and "&lt;" not in cell.replace(value, "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_reads_quoted_values_back():
    script = "\n".join(f"printf '%s\\0' {sh_quote(v)}" for v in HOSTILE if "\x00" not in v)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [v.encode() for v in HOSTILE if "\x00" not in v]


def test_config_json_in_a_hostile_folder(tmp_path):
    """A model given as a config.json path: the folder name becomes the model name and stays inert."""
    name = "evil\"'$(touch pwned)`id`\n---\nkey: {{ x }}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}))
    model = resolve_model(str(folder))
    assert model.name == name
    hw = build_hardware(gpus=2, nodes=2, vram=24)
    files = render_files(model, hw, build_training(hw), build_strategy(hw, "zero2"), gradient_accumulation_steps=1)
    assert json.loads(files["dsadvise.json"])["model"]["name"] == name
    yaml.safe_load(files["accelerate_config.yaml"])
    from advisor.render.validate import errors_of, validate_files

    assert not errors_of(validate_files(files, engines=False))
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_launch_script_passes_arguments_verbatim(tmp_path):
    """Running the generated launch script with a stand-in `accelerate` shows the exact argv it builds."""
    files = _render(nodes=2)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "launch_accelerate.sh").chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "accelerate"
    fake.write_text("#!/usr/bin/env bash\nprintf '%s\\0' \"$@\"\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "MACHINE_RANK": "1",
           "MAIN_PROCESS_IP": "10.1.2.3"}      # required: the config's address is loopback
    hostile = "$(touch pwned) `id` ; x"
    out = subprocess.run([str(tmp_path / "launch_accelerate.sh"), "train.py", hostile], env=env, cwd=tmp_path,
                         capture_output=True, check=True).stdout.split(b"\0")[:-1]
    argv = [a.decode() for a in out]
    assert argv[0] == "launch"
    assert argv[argv.index("--config_file") + 1] == str(tmp_path / "accelerate_config.yaml")
    assert argv[argv.index("--deepspeed_config_file") + 1] == str(tmp_path / "ds_config.json")
    assert argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[argv.index("--main_process_ip") + 1] == "10.1.2.3"
    assert argv[-2:] == ["train.py", hostile]
    assert not (tmp_path / "pwned").exists()
