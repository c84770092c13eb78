"""The live panel: a per-GPU memory bar stacked against VRAM, its legend, the verdict and the strategy."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static


def fmt_bytes(n: int) -> str:
    from ...formatting import fmt_bytes as fmt     # imported late: keeps pydantic off the first paint

    return fmt(n)

# (PerGPU field, legend text, colour): the order of the stack, the same as `dsadvise estimate`.
PARTS: tuple[tuple[str, str, str], ...] = (
    ("parameters", "parameters", "#4e79a7"),
    ("gradients", "gradients", "#f28e2b"),
    ("optimizer_states", "optimizer", "#e15759"),
    ("activations", "activations", "#76b7b2"),
    ("temporaries", "temporaries", "#59a14f"),
    ("buffers", "buffers", "#edc948"),
    ("overhead", "overhead", "#b07aa1"),
)
# --task infer: the same PerGPU fields hold weights, KV cache and the prefill transient (advisor.memory.inference)
INFER_NAMES = {"parameters": "weights", "activations": "KV cache", "temporaries": "prefill"}
FREE_STYLE = "#5a5a5a"
OVER_STYLE = "bold #ff5555"


def split_cells(values: list[int], scale: int, width: int) -> list[int]:
    """Cells of ``width`` for each value out of ``scale`` (largest remainder, so the cells add up exactly)."""
    if scale <= 0 or width <= 0:
        return [0] * len(values)
    exact = [v / scale * width for v in values]
    cells = [int(x) for x in exact]
    target = min(width, round(sum(exact)))
    order = sorted(range(len(values)), key=lambda i: exact[i] - cells[i], reverse=True)
    for i in order[: max(0, target - sum(cells))]:
        cells[i] += 1
    return cells


class MemoryBar(Widget):
    """One stacked bar: the parts of the per-GPU total, then free VRAM. Past VRAM the parts are drawn
    hatched (▓) and a red marker under the bar shows where VRAM ends."""

    DEFAULT_CSS = "MemoryBar { height: 2; }"

    estimate = reactive(None, layout=False, always_update=True)

    def render(self) -> Text:
        width = max(self.content_size.width, 10)
        est = self.estimate
        if est is None:
            return Text("░" * width + "\n", style=FREE_STYLE) + Text("no estimate yet", style="dim")
        g, vram = est.per_gpu, est.hardware.vram_bytes
        # what is alive at the peak moment: gradients formed as backward frees activations (phase overlap)
        values = [getattr(g, key) - (getattr(g, "phase_overlap", 0) if key == "activations" else 0)
                  for key, _, _ in PARTS]
        values = [max(v, 0) for v in values]
        total = sum(values)
        scale = max(vram, total, 1)
        cells = split_cells(values + [max(vram - total, 0)], scale, width)
        vram_cell = min(width, round(vram / scale * width))
        bar = Text()
        pos = 0
        for (_, _, colour), n in zip(PARTS, cells[:-1]):
            for _ in range(n):
                bar.append("█" if pos < vram_cell else "▓", style=colour)
                pos += 1
        bar.append("░" * cells[-1], style=FREE_STYLE)
        bar.append(" " * max(0, width - bar.cell_len))
        if total > vram:
            marker = f"▲ VRAM {fmt_bytes(vram)}"
            start = max(2, min(vram_cell, width - len(marker)))
            scale_line = Text("0" + " " * (start - 1), style="dim") + Text(marker, style=OVER_STYLE)
        else:
            scale_line = Text("0", style="dim") + Text(f"{fmt_bytes(vram)}".rjust(width - 1), style="dim")
        return bar + Text("\n") + scale_line


class MemoryPanel(Vertical):
    """The right-hand panel, always visible: bar, legend with sizes, verdict and strategy."""

    def compose(self) -> ComposeResult:
        yield Static("Per-GPU memory", classes="panel-title")
        yield MemoryBar(id="memory-bar")
        yield Static(id="memory-legend")
        yield Static(id="memory-verdict")
        yield Static(id="memory-strategy")
        yield Static(id="memory-status", classes="hint")

    def on_mount(self) -> None:
        self.show(None, [], "")

    def show(self, est, missing: list[str], status: str, *, strategy_line: str = "", fits: bool | None = None) -> None:
        """Show ``est`` (an Estimate or None); ``missing`` lists inputs still needed; ``status`` one note."""
        self.query_one(MemoryBar).estimate = est
        legend = Text()
        if est is not None:
            g = est.per_gpu
            infer = getattr(est, "task", "train") == "infer"
            for key, name, colour in PARTS:
                if infer and not getattr(g, key) and key not in INFER_NAMES:
                    continue        # no gradients, optimizer states or buffers in inference
                name = INFER_NAMES.get(key, name) if infer else name
                legend.append("█ ", style=colour)
                legend.append(f"{name:<13}{fmt_bytes(getattr(g, key)):>11}\n")
            legend.append(f"  {'total':<13}{fmt_bytes(g.total):>11}", style="bold")
            legend.append(f" of {fmt_bytes(est.hardware.vram_bytes)}")
            cpu, st = est.per_node_cpu, est.strategy
            if cpu.available_bytes or st.offload_optimizer != "none" or st.offload_param != "none":
                legend.append("\nCPU RAM per node ")
                legend.append(fmt_bytes(cpu.total), style="bold" if cpu.fits else OVER_STYLE)
                legend.append(f" of {fmt_bytes(cpu.available_bytes)}" if cpu.available_bytes
                              else " (give CPU RAM to check it)")
        self.query_one("#memory-legend", Static).update(legend)

        verdict = Text()
        if est is not None:
            ok = est.fits if fits is None else fits
            if ok:
                verdict.append(" FITS ", style="bold black on #59a14f")
                verdict.append(f"  headroom {fmt_bytes(est.headroom_bytes)}")
            else:
                verdict.append(" DOES NOT FIT ", style="bold white on #c0392b")
                over = -est.headroom_bytes
                if over > 0:
                    verdict.append(f"  {fmt_bytes(over)} over")
        elif fits is False:
            verdict.append(" NOTHING FITS ", style="bold white on #c0392b")
        elif missing:
            verdict.append("Still needed: " + ", ".join(missing), style="italic")
        self.query_one("#memory-verdict", Static).update(verdict)
        self.query_one("#memory-strategy", Static).update(Text(strategy_line))
        self.query_one("#memory-status", Static).update(Text(status))
