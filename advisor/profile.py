"""A machine profile: rates measured by ``dsadvise calibrate`` on the machine it ran on (pure data, no torch).

The profile is a documented YAML file (see :func:`profile_yaml`); ``estimate``, ``recommend`` and the wizard
read it with ``--profile PATH`` and use its measured rates instead of the GPU catalog's datasheet figures
(:func:`advisor.recommend.step_time.rates_for`). Units: FLOP/s and bytes/s inside, as the field names say.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

PROFILE_VERSION = 1


class MachineProfile(BaseModel):
    """What ``dsadvise calibrate`` measured; ``None`` where the machine could not measure it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = PROFILE_VERSION
    device: str = Field(description="what the matmuls ran on: 'cpu (...)' or the CUDA device name")
    device_kind: str = Field(description="cpu | cuda")
    devices: int = Field(ge=1, description="devices of this node the collectives ran over")
    matmul_flops: dict[str, float] = Field(description="dense matmul FLOP/s per dtype (fp32, bf16, fp16)")
    allreduce_bus_bytes_per_s: float | None = Field(None, description="ring all-reduce bus bandwidth, bytes/s")
    allgather_bus_bytes_per_s: float | None = Field(None, description="all-gather bus bandwidth, bytes/s")
    collective_backend: str | None = None
    host_to_device_bytes_per_s: float | None = Field(None, description="pinned host->device copy, bytes/s")
    device_to_host_bytes_per_s: float | None = Field(None, description="device->pinned host copy, bytes/s")
    cpu_adam_params_per_s: dict[str, float] = Field(
        default_factory=dict, description="optimizer steps on this CPU, parameters/s: torch_fused, torch_foreach, "
                                          "deepspeed (DeepSpeedCPUAdam) where it could be built")
    host: str = ""
    torch_version: str = ""
    created: str = ""
    quick: bool = False
    notes: list[str] = []

    @property
    def label(self) -> str:
        return f"profile of {self.device} ({self.created or 'undated'})"


def default_profile_path() -> Path:
    """``$XDG_CONFIG_HOME/dsadvise/profile.yaml`` (``~/.config/dsadvise/profile.yaml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dsadvise" / "profile.yaml"


_HEADER = """\
# dsadvise machine profile, written by `dsadvise calibrate` (version {version}).
# Read by `dsadvise estimate|recommend|wizard --profile PATH`: its measured rates replace the GPU catalog's
# datasheet figures in the step-time model (advisor/recommend/step_time.py).
#
#   device, device_kind, devices     what was measured: matmuls on `device`; collectives over `devices`
#   matmul_flops                     dense square matmul (torch.matmul), FLOP/s per dtype; the step-time model
#                                    assumes a training step reaches profile_step_per_matmul of it
#                                    (advisor/data/step_time.yaml)
#   allreduce_bus_bytes_per_s        ring all-reduce bus bandwidth (nccl-tests convention: size x 2(n-1)/n / time)
#   allgather_bus_bytes_per_s        all-gather bus bandwidth (size x (n-1)/n / time); null with one device
#   host_to_device_bytes_per_s       pinned host memory -> device copy; null on a CPU-only machine
#   device_to_host_bytes_per_s       device -> pinned host memory copy
#   cpu_adam_params_per_s            AdamW steps on this CPU: torch fused, torch for-each, DeepSpeedCPUAdam
#   quick                            true when measured with the short settings (less stable figures)
"""


def profile_yaml(profile: MachineProfile) -> str:
    """The documented YAML text of ``profile``."""
    import yaml

    body = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, width=100)
    return _HEADER.format(version=profile.version) + body


def load_profile(path: str | os.PathLike) -> MachineProfile:
    """Read a profile written by ``dsadvise calibrate``; one clear InputError on a missing or bad file."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"no profile at {p} (write one with `dsadvise calibrate --out {p}`)", field="--profile")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{p} is not a readable YAML profile: {exc}".splitlines()[0], field="--profile") from None
    if not isinstance(data, dict):
        raise InputError(f"{p} is not a dsadvise profile (expected a mapping)", field="--profile")
    try:
        prof = MachineProfile(**data)
    except (ValidationError, TypeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc), "loc": ()}
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise InputError(f"{p} is not a valid dsadvise profile: {where + ': ' if where else ''}{first['msg']}",
                         field="--profile") from None
    if prof.version != PROFILE_VERSION:
        raise InputError(f"{p} is a version-{prof.version} profile; this dsadvise reads version {PROFILE_VERSION}",
                         field="--profile")
    return prof
