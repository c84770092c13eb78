"""Step 2: the hardware. A catalog GPU fills in VRAM, bf16 and bandwidth; then GPUs, nodes and CPU RAM."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.widgets import Input, Select, Static

from ..form import WizardInputs, vram_text
from .advanced import AdvancedSection, advanced_sections
from .fields import Field, number_input


def gpu_summary(gpu) -> str:
    """One line of the picked GPU's datasheet figures (a catalog GPUInfo), or how to go without one."""
    from ...formatting import fmt_bytes

    if gpu is None:
        return "No catalog GPU: give the memory per GPU below (a generic GPU is assumed for speed)."
    return (f"{gpu.name}: {fmt_bytes(gpu.memory_bytes)}, bf16 {'yes' if gpu.bf16 else 'no'}, "
            f"{gpu.fp16_tflops:g} TFLOPS fp16, HBM {gpu.hbm_bandwidth_gbps:g} GB/s, "
            f"{gpu.intra_node_link} {gpu.intra_node_bandwidth_gbps:g} GB/s between GPUs")


class HardwareStep(VerticalScroll):
    """GPU picker and the machine counts."""

    can_focus = False    # Tab goes to the fields; they scroll into view

    def __init__(self, *, gpu: str = "", vram: str = "", gpus: str = "1", nodes: str = "1", cpu_ram: str = "",
                 inputs: WizardInputs | None = None, **kwargs) -> None:
        from ...catalog.gpus import list_gpus

        super().__init__(**kwargs)
        self._gpus = {g.name: g for g in list_gpus()}
        self._initial = dict(gpu=gpu, vram=vram, gpus=gpus, nodes=nodes, cpu_ram=cpu_ram)
        self._picked = gpu
        self._inputs = inputs or WizardInputs()

    def compose(self) -> ComposeResult:
        v = self._initial
        yield Static("What will it run on?", classes="step-title")
        options = [(f"{g.name:<14} {g.memory_bytes / 2**30:>4.0f} GiB  {g.vendor}", g.name)
                   for g in self._gpus.values()]
        yield Field("gpu", "GPU model", Select(options, prompt="other GPU (give VRAM below)",
                                                value=v["gpu"] or Select.NULL, id="field-gpu"))
        yield Static(gpu_summary(self._gpus.get(v["gpu"])), id="gpu-info", markup=False)
        with Grid(classes="fields"):
            yield Field("vram", "VRAM per GPU (GiB)", number_input("vram", v["vram"], "e.g. 24"))
            yield Field("gpus", "GPUs per node", number_input("gpus", v["gpus"]))
            yield Field("nodes", "Nodes", number_input("nodes", v["nodes"]))
            yield Field("cpu_ram", "CPU RAM per node (GiB)", number_input("cpu_ram", v["cpu_ram"], "optional"),
                        hint="checked when offloading")
        yield from advanced_sections("hardware", self._inputs)

    def update_titles(self, inputs: WizardInputs) -> None:
        """The Advanced section's title counts what is set."""
        for section in self.query(AdvancedSection):
            section.update_title(inputs)

    @on(Select.Changed, "#field-gpu")
    def _fill_from_gpu(self, event: Select.Changed) -> None:
        gpu = self._gpus.get(event.value) if isinstance(event.value, str) else None
        self.query_one("#gpu-info", Static).update(gpu_summary(gpu))
        picked = gpu.name if gpu is not None else ""
        if picked == self._picked:      # Select also reports its initial value: keep a VRAM given at start
            return
        self._picked = picked
        if gpu is not None:
            self.query_one("#field-vram", Input).value = vram_text(gpu.name)
