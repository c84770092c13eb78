"""The GPU catalog: its data is valid and plausible, and names resolve (or fail) the way users expect."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.datafiles import load_data
from advisor.catalog.gpus import list_gpus, normalize_gpu_name, resolve_gpu
from advisor.errors import InputError
from advisor.specs import GiB, GPUInfo

GPUS = list_gpus()
BY_NAME = {g.name: g for g in GPUS}
RAW = load_data("gpus.yaml")["gpus"]

# Nominal memory of every catalog entry, in GB as marketed (per GCD for the MI250X). A new entry must be
# added here, so that its memory figure is checked too.
NOMINAL_GB = {
    "v100-16g": 16, "v100-32g": 32, "t4": 16, "a10g": 24, "rtx-3090": 24, "rtx-a6000": 48,
    "a100-40g": 40, "a100-80g": 80, "a100-pcie-80g": 80, "l4": 24, "rtx-4090": 24, "rtx-6000-ada": 48,
    "l40s": 48, "h100-pcie": 80, "h100-sxm": 80, "h200": 141, "mi250x": 64, "mi300x": 192,
    "h800": 80, "h20": 96, "a800": 80, "l20": 48, "b200": 180, "gb200": 186, "rtx-5090": 32,
    "rtx-pro-6000-blackwell": 96, "mi325x": 256, "mi355x": 288,
}


# ----------------------------------------------------------------------------------------- the data


def test_catalog_has_the_promised_gpus():
    assert set(BY_NAME) == set(NOMINAL_GB)
    assert len(BY_NAME) == len(GPUS), "duplicate canonical names"


@pytest.mark.parametrize("raw", RAW, ids=[r["name"] for r in RAW])
def test_every_entry_validates_and_is_complete(raw):
    gpu = GPUInfo(**{("memory_bytes" if k == "memory_gib" else k): (round(v * GiB) if k == "memory_gib" else v)
                     for k, v in raw.items()})
    assert gpu == BY_NAME[raw["name"]]
    # every field written out, none left to a default
    assert set(raw) == (set(GPUInfo.model_fields) - {"memory_bytes"}) | {"memory_gib"}
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", gpu.name), "canonical ids are lower-case-with-dashes"
    assert gpu.aliases, "the device name torch prints must be an alias"
    assert "http" in gpu.source


def test_list_gpus_is_a_fresh_list_of_cached_entries():
    first = list_gpus()
    first.clear()
    again = list_gpus()
    assert len(again) == len(GPUS)
    assert all(a is b for a, b in zip(again, GPUS))


def test_memory_is_converted_with_binary_gib():
    for raw in RAW:
        assert BY_NAME[raw["name"]].memory_bytes == round(raw["memory_gib"] * 1024**3)


def test_names_and_aliases_unique_after_normalization():
    owners: dict[str, set[str]] = {}
    for g in GPUS:
        for spelling in (g.name, *g.aliases):
            owners.setdefault(normalize_gpu_name(spelling), set()).add(g.name)
    assert "" not in owners
    clashes = {k: v for k, v in owners.items() if len(v) > 1}
    assert not clashes, f"spellings of different GPUs that normalize alike: {clashes}"


def test_aliases_are_not_redundant():
    # an alias normalization already reaches is noise; the one exception is the device name torch and
    # nvidia-smi print ("NVIDIA L4"), kept verbatim for the reader even where it reduces to the id
    for g in GPUS:
        plain = [s for s in (g.name, *g.aliases) if s.split()[0] not in ("NVIDIA", "Tesla", "AMD")]
        keys = Counter(normalize_gpu_name(s) for s in plain)
        assert all(n == 1 for n in keys.values()), f"{g.name}: redundant aliases {keys}"
        device_names = [s for s in g.aliases if s not in plain]
        assert len(device_names) <= 1, g.name
        assert len(set(g.aliases)) == len(g.aliases), g.name


def test_bf16_flag_matches_bf16_tflops():
    for g in GPUS:
        assert g.bf16 == (g.bf16_tflops is not None), g.name
        if g.bf16:
            assert g.bf16_tflops == g.fp16_tflops, f"{g.name}: bf16 and fp16 tensor rates are equal on these parts"
    assert {g.name for g in GPUS if not g.bf16} == {"v100-16g", "v100-32g", "t4"}


def test_memory_sizes_of_known_cards():
    for g in GPUS:
        nominal = NOMINAL_GB[g.name]
        # what the driver reports is a little below the nominal size (GB read as GiB), never above it,
        # and never as far off as the GB/GiB confusion or a per-package MI250X figure would put it
        assert 0.9 * nominal * GiB <= g.memory_bytes <= nominal * GiB, g.name
    assert BY_NAME["a100-80g"].memory_bytes > 79 * GiB
    assert BY_NAME["a100-40g"].memory_bytes < 40 * GiB
    assert BY_NAME["h200"].memory_bytes > 139 * GiB
    assert BY_NAME["t4"].memory_bytes < 15 * GiB
    assert BY_NAME["mi250x"].memory_bytes < 64 * GiB  # one GCD, not the 128 GB package


def test_dense_tensor_rates_not_sparse_ones():
    # the datasheets print the 2:4-sparsity figure first; these are the dense halves
    assert BY_NAME["a100-80g"].fp16_tflops == 312
    assert BY_NAME["h100-sxm"].fp16_tflops == pytest.approx(989.4, rel=0.01)
    assert BY_NAME["h100-pcie"].fp16_tflops == pytest.approx(756, rel=0.01)
    assert BY_NAME["l40s"].fp16_tflops == pytest.approx(362, rel=0.01)
    assert BY_NAME["mi300x"].fp16_tflops == pytest.approx(1307.4, rel=0.01)
    # GeForce: the FP32-accumulate rate (what autocast uses), not the FP16-accumulate one
    assert BY_NAME["rtx-4090"].fp16_tflops == pytest.approx(165.2, rel=0.01)
    assert BY_NAME["rtx-3090"].fp16_tflops == pytest.approx(71, rel=0.01)


def test_fp8_only_where_the_card_has_fp8_units():
    has = {g.name for g in GPUS if g.fp8_tflops is not None}
    assert {"h100-sxm", "h200", "b200", "gb200", "mi300x", "mi355x", "rtx-5090", "l40s"} <= has
    assert not has & {"v100-16g", "t4", "a100-80g", "a800", "mi250x", "rtx-3090"}
    for g in GPUS:
        if g.fp8_tflops is not None:
            assert g.fp8_tflops == pytest.approx(2 * g.fp16_tflops, rel=0.02), f"{g.name}: FP8 is twice FP16"
    assert BY_NAME["b200"].fp8_tflops == 4500 and BY_NAME["mi355x"].fp16_tflops > BY_NAME["b200"].fp16_tflops


def test_compute_generations_are_ordered():
    fp16 = {g.name: g.fp16_tflops for g in GPUS}
    assert fp16["h100-sxm"] > fp16["h100-pcie"] > fp16["a100-80g"] > fp16["v100-16g"] > fp16["t4"]
    assert fp16["h200"] == fp16["h100-sxm"]
    assert fp16["a100-40g"] == fp16["a100-80g"]
    assert fp16["mi300x"] > fp16["h100-sxm"]
    assert fp16["rtx-4090"] > fp16["rtx-3090"]
    for g in GPUS:
        assert g.fp32_tflops < g.fp16_tflops, f"{g.name}: tensor cores beat plain FP32"


def test_memory_bandwidth_generations_are_ordered():
    bw = {g.name: g.hbm_bandwidth_gbps for g in GPUS}
    assert bw["mi300x"] > bw["h200"] > bw["h100-sxm"] > bw["a100-80g"] > bw["a100-40g"] > bw["v100-16g"]
    assert bw["a100-80g"] > bw["a100-pcie-80g"]
    assert bw["h100-sxm"] > bw["h100-pcie"]
    assert bw["b200"] > bw["h200"] and bw["mi355x"] > bw["mi325x"] > bw["mi300x"]
    assert all(250 <= b <= 8000 for b in bw.values())


def test_links_match_the_form_factor():
    for g in GPUS:
        assert (g.intra_node_link == "infinity-fabric") == (g.vendor == "amd"), g.name
    nvlink = [g for g in GPUS if g.intra_node_link == "nvlink"]
    pcie = [g for g in GPUS if g.intra_node_link == "pcie"]
    assert {g.name for g in nvlink} == {"v100-16g", "v100-32g", "a100-40g", "a100-80g", "h100-sxm", "h200",
                                        "h800", "h20", "a800", "b200", "gb200"}
    assert min(g.intra_node_bandwidth_gbps for g in nvlink) > max(g.intra_node_bandwidth_gbps for g in pcie)
    assert BY_NAME["rtx-4090"].intra_node_link == "pcie"
    assert BY_NAME["h100-sxm"].intra_node_bandwidth_gbps > BY_NAME["a100-80g"].intra_node_bandwidth_gbps
    assert BY_NAME["mi300x"].intra_node_bandwidth_gbps > max(g.intra_node_bandwidth_gbps for g in pcie)
    for g in GPUS:
        assert g.pcie_bandwidth_gbps <= 64, f"{g.name}: PCIe Gen5 x16 tops out at 64 GB/s one way"
        if g.intra_node_link == "pcie":
            assert g.intra_node_bandwidth_gbps <= g.pcie_bandwidth_gbps, g.name
        # per node: from a 25 Gb/s workstation link up to 8 x 400 Gb/s
        assert 3 <= g.inter_node_bandwidth_gbps <= 400, g.name
    assert BY_NAME["h100-sxm"].inter_node_bandwidth_gbps > BY_NAME["l4"].inter_node_bandwidth_gbps


def test_catalog_module_does_not_import_torch():
    code = ("import sys; import advisor.catalog.gpus as m; m.resolve_gpu('h100-sxm'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("text, name", [
    ("a100-80g", "a100-80g"),
    ("A100-80G", "a100-80g"),
    ("a100_80gb", "a100-80g"),
    ("A100 80GB", "a100-80g"),
    ("A100-80GB", "a100-80g"),
    ("a100 80 gb", "a100-80g"),
    ("a100-80gib", "a100-80g"),
    ("A100-SXM4-80GB", "a100-80g"),
    ("NVIDIA A100-SXM4-80GB", "a100-80g"),
    ("  nvidia a100-sxm4-80gb  ", "a100-80g"),
    ("A10080GB", "a100-80g"),
    ("NVIDIA A100-SXM4-40GB", "a100-40g"),
    ("a100 pcie", "a100-pcie-80g"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80g"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("h100 sxm", "h100-sxm"),
    ("H100 SXM5", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("h100_pcie", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("Tesla V100-SXM2-16GB", "v100-16g"),
    ("V100 32GB", "v100-32g"),
    ("Tesla T4", "t4"),
    ("T4", "t4"),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA L4", "l4"),
    ("L40S", "l40s"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("RTX4090", "rtx-4090"),
    ("4090", "rtx-4090"),
    ("GeForce RTX 3090", "rtx-3090"),
    ("RTX A6000", "rtx-a6000"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ("AMD Instinct MI300X", "mi300x"),
    ("mi250x", "mi250x"),
    ("ＡＭＤ ＭＩ３００Ｘ", "mi300x"),  # full-width forms, as pasted from some pages
])
def test_resolve_alias_forms(text, name):
    assert resolve_gpu(text).name == name


@pytest.mark.parametrize("gpu", GPUS, ids=[g.name for g in GPUS])
def test_every_name_and_alias_resolves_to_its_entry(gpu):
    for spelling in (gpu.name, *gpu.aliases):
        assert resolve_gpu(spelling) is gpu
        assert resolve_gpu(spelling.upper()) is gpu
        assert resolve_gpu(spelling.replace("-", "_").replace(" ", "_")) is gpu


@pytest.mark.parametrize("text, candidates", [
    ("h100", {"h100-pcie", "h100-sxm"}),
    ("NVIDIA H100", {"h100-pcie", "h100-sxm"}),
    ("H100 80GB", {"h100-pcie", "h100-sxm"}),
    ("a100", {"a100-40g", "a100-80g", "a100-pcie-80g"}),
    ("V100", {"v100-16g", "v100-32g"}),
    ("Tesla V100 SXM2", {"v100-16g", "v100-32g"}),
])
def test_ambiguous_names_raise_listing_candidates(text, candidates):
    with pytest.raises(InputError) as info:
        resolve_gpu(text)
    err = info.value
    assert err.field == "gpu"
    assert "ambiguous" in str(err)
    listed = re.search(r"it matches (.*?);", str(err)).group(1).split(", ")
    assert set(listed) == candidates


@pytest.mark.parametrize("text", ["", "   ", "nvidia", "A100-PCIE-40GB", "mi250", "H200 NVL", "TPU v5e",
                                  "rtx 6090", "gpu", "80"])
def test_unknown_names_raise(text):
    with pytest.raises(InputError) as info:
        resolve_gpu(text)
    assert info.value.field == "gpu"
    message = str(info.value)
    assert message.startswith("gpu: ")
    assert "unknown GPU" in message or "ambiguous GPU" in message


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(InputError) as info:
        resolve_gpu("h100-nvl")
    message = str(info.value)
    assert message.startswith("gpu: unknown GPU 'h100-nvl'; known: ")
    assert all(g.name in message for g in GPUS)
    assert "did you mean" in message and "h100-" in message.split("did you mean", 1)[1]
    with pytest.raises(InputError, match=r"did you mean mi250x\b"):
        resolve_gpu("mi250")


_SEPARATORS = st.sampled_from(["-", "_", " ", "  ", ".", "/", "-_-"])


@st.composite
def _respelled(draw):
    """A catalog spelling with its separators replaced and letters re-cased at random."""
    gpu = draw(st.sampled_from(GPUS))
    spelling = draw(st.sampled_from((gpu.name, *gpu.aliases)))
    parts = [p for p in spelling.replace("_", " ").replace("-", " ").split(" ") if p]
    text = parts[0]
    for part in parts[1:]:
        text += draw(_SEPARATORS) + part
    text = "".join(c.upper() if draw(st.booleans()) else c.lower() for c in text)
    return gpu, text


@given(_respelled())
def test_respelled_names_resolve(case):
    gpu, text = case
    assert resolve_gpu(text) is gpu


@settings(max_examples=300)
@given(st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list("aAhHvV0123456789 -_gGbBsxmpcieSXMPCIE/.")), max_size=20),
    st.builds(lambda g, s: g.name + s, st.sampled_from(GPUS), st.text(max_size=5)),
))
def test_arbitrary_text_gives_a_gpu_or_input_error(text):
    try:
        result = resolve_gpu(text)
    except InputError as err:
        assert err.field == "gpu"
    else:
        assert isinstance(result, GPUInfo)
        assert result in GPUS


def test_every_catalog_gpu_names_a_generation_the_step_time_model_knows():
    """A GPU without its generation silently gets the 'unknown' compute fraction: each entry must name one."""
    from advisor.catalog.gpus import list_gpus
    from advisor.datafiles import load_data

    known = set(load_data("step_time.yaml")["achievable_fraction"]) - {"unknown"}
    missing = {g.name: g.generation for g in list_gpus() if g.generation not in known}
    assert not missing, f"catalog GPUs without a known generation: {missing}"
