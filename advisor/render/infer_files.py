"""The files ``dsadvise generate --task infer`` writes, by layout, with what each is: names only (no rendering
here), so that the writer (:mod:`advisor.render.write`, through :mod:`advisor.render.render`) knows them
without importing the inference renderer."""

from __future__ import annotations

MANIFEST = "dsadvise.json"
EXECUTABLE = ("launch_device_map.sh", "launch_replicas.sh", "infer_device_map.py", "infer_replicas.py")
FILES = {
    "device-map-auto": ("infer_device_map.py", "launch_device_map.sh"),
    "replica-per-gpu": ("infer_replicas.py", "launch_replicas.sh"),
}
DESCRIPTIONS = {
    "infer_device_map.py": "one process over all GPUs: from_pretrained(device_map=\"auto\", max_memory=...), generate",
    "launch_device_map.sh": "CUDA_VISIBLE_DEVICES=... python infer_device_map.py (and the llamafactory-cli chat line)",
    "infer_replicas.py": "one replica per GPU: each process generates its share of the prompts",
    "launch_replicas.sh": "accelerate launch --num_processes N infer_replicas.py (and the LLaMA-Factory predict line)",
    "README.md": "this file",
    MANIFEST: "the plan these files were rendered from; `dsadvise dry-run` reads its proxy model here",
}
