"""``dsadvise wizard``: an interactive terminal UI (Textual) over the same API as the CLI.

Steps (tabs): F1 model (type to search the catalog, a size, or a config.json path), F2 hardware (catalog GPU
fills VRAM / bf16 / bandwidth; GPUs per node, nodes, CPU RAM), F3 training (method, sequence length, batch,
precision, optimizer, checkpointing, LoRA rank, optionally a strategy), F4 recommendation (why, alternatives,
rules fired, the estimate's notes and assumptions), F5 configs (accelerate YAML / DeepSpeed JSON preview, the
equivalent ``dsadvise`` command, Save, Dry run). Every other flag of ``estimate`` / ``recommend`` is a field in a
collapsible Advanced section of F2 / F3, generated from the flag table (:mod:`.widgets.advanced`). The
right-hand panel shows the per-GPU memory of what is chosen at every step. Keys: Ctrl+N / Ctrl+B next / previous step, F1-F5 jump,
Tab / Shift+Tab between fields, Enter next field, Ctrl+S save, Ctrl+R dry run, Ctrl+Q quit (exit code 0).

Layout: :mod:`advisor.cli.wizard` (the sub-command; imports nothing from Textual), :mod:`.form` (fields as
plain data, parsed with the CLI's argument types), :mod:`.backend` (the API calls: estimate, recommend,
render, write, dry-run), :mod:`.app` (the App), :mod:`.widgets` (one module per screen area),
``wizard.tcss`` (the one stylesheet).
Importing this package does not import Textual.
"""
