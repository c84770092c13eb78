"""Check rendered (or user) config files: they parse, match the shipped JSON Schemas, and load in the real
engines — accelerate's own launch-time processing of the YAML and ``deepspeed.runtime.config.DeepSpeedConfig``
for the target world size — without launching anything.

DeepSpeedConfig reads the world size from torch.distributed; here it gets the target world size from a
stand-in ``mpu`` (``get_data_parallel_world_size``) while ``deepspeed.comm.get_rank`` is patched to 0 for the
duration of the call, so the batch arithmetic is checked for the world the config is meant for.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from unittest import mock

from ..errors import AdvisorError

SCHEMAS = {"accelerate": "schemas/accelerate_config.schema.json", "deepspeed": "schemas/ds_config.schema.json"}
HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")      # deepspeed/launcher/runner.py _parse_hostfile
SHELL_FILES = (".sh", ".sbatch")


class ConfigFileError(AdvisorError):
    """A file that cannot be read or parsed: one line, exit 2."""

    exit_code = 2


class EngineError(Exception):
    """An engine (accelerate, DeepSpeed) refused a config; the message names the file and setting."""

    def __init__(self, file: str, setting: str, message: str):
        self.file, self.setting, self.message = file, setting, message
        super().__init__(f"{file}: {setting}: {message}" if setting else f"{file}: {message}")


@dataclass
class Finding:
    """One problem (or note) about one setting of one file."""

    severity: str                 # error | warning | info
    file: str
    setting: str
    message: str
    schema: bool = False          # found by the shipped JSON Schema (the engine's verdict outranks it)
    estimate: dict | None = None  # check's fit verdict: the numbers (bytes), command, keys not counted (JSON only)

    def line(self) -> str:
        where = f"{self.file}: {self.setting}" if self.setting else self.file
        return f"{self.severity}: {where}: {self.message}"

    def to_json(self) -> dict:
        out = {"severity": self.severity, "file": self.file, "setting": self.setting, "message": self.message}
        return out | ({"estimate": self.estimate} if self.estimate is not None else {})


class StepStatus(str, Enum):
    """How one validation or dry-run step ended (the JSON writes the value: ``pass``, ``fail``, ``skip``)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class Step:
    """One step of validation or dry-run: pass / fail / skip, with timing and details."""

    name: str
    status: StepStatus = StepStatus.PASS
    seconds: float = 0.0
    detail: str = ""
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"step": self.name, "status": self.status.value, "seconds": round(self.seconds, 2),
                "detail": self.detail, "findings": [f.to_json() for f in self.findings]}


# ---------------------------------------------------------------- parsing

def parse_text(name: str, text: str, fmt: str | None = None) -> Any:
    """Parse one file as ``fmt`` ("json" / "yaml"), else by its name; raises ConfigFileError (one line, naming
    the file as it is called) when it does not parse."""
    try:
        data = _parse(name, text, fmt)
    except RecursionError:
        raise ConfigFileError(f"{name}: nested too deeply to be a config file") from None
    if isinstance(data, (dict, list)) and _depth(data) > MAX_NESTING:
        raise ConfigFileError(f"{name}: nested more than {MAX_NESTING} levels deep: not a config file") from None
    return data


def _parse(name: str, text: str, fmt: str | None = None) -> Any:
    import yaml

    fmt = fmt or ("yaml" if name.endswith((".yaml", ".yml")) else "json" if name.endswith(".json") else None)
    if fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigFileError(f"{name}: not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigFileError(f"{name}: expected a mapping of accelerate settings, got {type(data).__name__}")
        return data
    if fmt == "json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise ConfigFileError(f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
                from None
        except ValueError as exc:
            raise ConfigFileError(f"{name}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigFileError(f"{name}: expected a JSON object, got {type(data).__name__}")
        return data
    return text


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} (DeepSpeed refuses duplicate keys)")
        out[k] = v
    return out


MAX_CONFIG_BYTES = 4 * 1024 * 1024     # config files are kilobytes; this bounds what check ever reads
MAX_NESTING = 64                       # DeepSpeed / accelerate configs nest 3-4 levels


def read_text(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES; ConfigFileError (one line, exit 2) otherwise.
    Devices, FIFOs and folders are refused before reading (``/dev/zero`` never ends; its size says 0)."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise ConfigFileError(f"{path}: {what}; give a config file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)      # bounded even if the file grows while we read
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"{path}: too large for a config file (over {MAX_CONFIG_BYTES} bytes)")
        return data.decode("utf-8")
    except ConfigFileError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigFileError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _depth(data: Any) -> int:
    """How deep ``data`` nests (iterative: a deep document must not exhaust the stack here)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        obj, d = stack.pop()
        if isinstance(obj, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_NESTING:
                stack.extend((v, d + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return deepest


def check_shell(name: str, text: str) -> list[Finding]:
    """``bash -n`` (syntax only) on a launch script; nothing when bash is missing."""
    bash = shutil.which("bash")
    if bash is None:
        return []
    proc = subprocess.run([bash, "-n", "/dev/stdin"], input=text, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return [Finding("error", name, "", f"bash -n: {proc.stderr.strip().splitlines()[-1] if proc.stderr else 'syntax error'}")]
    return []


def check_hostfile(name: str, text: str) -> list[Finding]:
    """DeepSpeed's hostfile rules: 'host slots=N' lines, comments, no duplicate hosts."""
    hosts: set[str] = set()
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = HOSTFILE_LINE.search(line)
        if not m:
            out.append(Finding("error", name, f"line {i}", f"not 'hostname slots=N': {line[:60]!r}"))
        elif m.group(1) in hosts:
            out.append(Finding("error", name, f"line {i}", f"duplicate host {m.group(1)!r}"))
        else:
            hosts.add(m.group(1))
    if not hosts and not out:
        out.append(Finding("error", name, "", "no hosts"))
    return out


# ---------------------------------------------------------------- schemas

def schema_findings(kind: str, data: Any, file: str) -> list[Finding]:
    """Violations of the shipped JSON Schema; unknown nested keys are warnings, the rest errors."""
    import jsonschema

    from ..datafiles import load_data

    schema = load_data(SCHEMAS[kind])
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        if kind == "deepspeed" and err.instance == "auto":
            continue    # the HF Trainer / accelerate fill every "auto" before DeepSpeed sees the file
        path = ".".join(str(p) for p in err.absolute_path)
        severity = "error"
        if err.validator == "additionalProperties" and path:
            severity = "warning"     # accelerate ignores unknown nested keys; the engine check sees DeepSpeed's
        msg = err.message
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            msg = f"unknown key(s) {', '.join(map(repr, extra))}" + (
                " (accelerate refuses unknown top-level keys)" if not path else " (ignored)")
        elif err.validator == "not" and kind == "deepspeed" and not path:
            msg = "fp16 and bf16 are both enabled: DeepSpeed refuses this ('bfloat16 and fp16 modes cannot be " \
                  "simultaneously enabled')"
        out.append(Finding(severity, file, path, _one_line(msg, err), schema=True))
    return out


def _one_line(msg: str, err) -> str:
    """A schema message on one readable line: never a dump of the (possibly whole) config."""
    msg = " ".join(msg.split())
    if len(msg) <= 200:
        return msg
    got = " ".join(repr(err.instance).split())
    got = got if len(got) <= 60 else got[:57] + "..."
    want = {"type": f"must be of type {err.validator_value}", "enum": "must be one of "
            + ", ".join(map(repr, err.validator_value[:8])) + (", ..." if len(err.validator_value) > 8 else ""),
            "required": f"needs {err.validator_value}"}.get(err.validator, f"fails the schema's {err.validator!r}")
    line = f"{got}: {want}"
    return line if len(line) <= 200 else line[:197] + "..."


# A message of an engine saying that this machine lacks a package or program the configuration needs (fp8 without
# Transformer Engine, the mpirun launcher without MPI, pdsh): not a fault of the file.
_MISSING = re.compile(r"not installed|No module named|is not available on this machine|were not found|"
                      r"not found in PATH|command not found|pip3? install", re.I)


def missing_dependency(message: str) -> bool:
    """Whether an engine's refusal only says that this machine lacks a package or program."""
    return bool(_MISSING.search(message))


# ---------------------------------------------------------------- DeepSpeed

class _DataParallelOnly:
    """The piece of an ``mpu`` DeepSpeedConfig asks for: the data-parallel world size."""

    def __init__(self, world_size: int, sequence_parallel: int = 1):
        self.world_size = world_size
        self.sequence_parallel = sequence_parallel

    def get_data_parallel_world_size(self) -> int:
        return self.world_size

    def get_sequence_parallel_world_size(self) -> int:
        return self.sequence_parallel


def fill_auto(config: dict, *, micro_batch: int = 1, gradient_accumulation_steps: int = 1,
              hidden_size: int | None = None) -> tuple[dict, list[str]]:
    """A copy of ``config`` with the "auto" values the HF Trainer / accelerate would fill, and what was filled."""
    cfg = copy.deepcopy(config)
    filled = []

    def put(obj: dict, key: str, value: Any, label: str) -> None:
        if obj.get(key) == "auto":
            if value is None:
                del obj[key]
            else:
                obj[key] = value
            filled.append(f"{label}={value if value is not None else '(derived)'}")

    put(cfg, "train_micro_batch_size_per_gpu", micro_batch, "train_micro_batch_size_per_gpu")
    put(cfg, "gradient_accumulation_steps", gradient_accumulation_steps, "gradient_accumulation_steps")
    put(cfg, "train_batch_size", None, "train_batch_size")
    put(cfg, "gradient_clipping", 1.0, "gradient_clipping")
    for block in ("fp16", "bf16"):
        if isinstance(cfg.get(block), dict):
            put(cfg[block], "enabled", False, f"{block}.enabled")
    zero = cfg.get("zero_optimization")
    if isinstance(zero, dict):
        h = hidden_size
        put(zero, "reduce_bucket_size", h * h if h else None, "zero_optimization.reduce_bucket_size")
        put(zero, "stage3_prefetch_bucket_size", int(0.9 * h * h) if h else None,
            "zero_optimization.stage3_prefetch_bucket_size")
        put(zero, "stage3_param_persistence_threshold", 10 * h if h else None,
            "zero_optimization.stage3_param_persistence_threshold")
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("params"), dict):
        defaults = {"lr": 5e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
        for k, v in defaults.items():
            put(opt["params"], k, v, f"optimizer.params.{k}")

    def rest(obj: Any, prefix: str) -> None:
        # Any other "auto" (stage3_gather_16bit_weights_on_model_save, scheduler params, ...) is filled by the
        # integration (accelerate's DeepSpeedPlugin.deepspeed_config_process, trainer_config_finalize);
        # DeepSpeed then reads its own default.
        if isinstance(obj, dict):
            for k in list(obj):
                if obj[k] == "auto":
                    del obj[k]
                    filled.append(f"{prefix}{k}=(filled by the integration)")
                else:
                    rest(obj[k], f"{prefix}{k}.")
    rest(cfg, "")
    return cfg, filled


def _pydantic_message(exc: Exception) -> tuple[str, str]:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            title = getattr(exc, "title", "")
            prefix = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedFP16Config": "fp16",
                      "DeepSpeedBF16Config": "bf16", "DeepSpeedZeroOffloadOptimizerConfig":
                      "zero_optimization.offload_optimizer", "DeepSpeedZeroOffloadParamConfig":
                      "zero_optimization.offload_param", "TPTrainingConfig": "tensor_parallel"}.get(title, title)
            setting = ".".join(x for x in (prefix, loc) if x)
            msg = err.get("msg", str(exc))
            if err.get("type") == "extra_forbidden" and title in ("DeepSpeedZeroConfig", "TPTrainingConfig"):
                import difflib

                from deepspeed.runtime.tensor_parallel.config import TPTrainingConfig
                from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

                model_cls = DeepSpeedZeroConfig if title == "DeepSpeedZeroConfig" else TPTrainingConfig
                names = sorted(set(model_cls.model_fields) | {f.alias for f in
                               model_cls.model_fields.values() if f.alias})
                close = difflib.get_close_matches(str(err["loc"][-1]), names, n=1, cutoff=0.75)
                msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else f" ({msg})")
            return setting, msg
        except Exception:  # pragma: no cover - a pydantic shape we do not know
            pass
    text = str(exc).strip().splitlines()
    return "", text[0] if text else type(exc).__name__


def ds_batch_world(config: dict, world_size: int) -> int:
    """The world DeepSpeedConfig divides train_batch_size by: world / sequence_parallel_size under Ulysses (its mpu's
    data-parallel world, or the config key when no mpu is given: deepspeed/runtime/config.py), else the world
    (AutoTP builds its groups after the config is checked)."""
    sp = config.get("sequence_parallel_size") if isinstance(config, dict) else None
    if isinstance(sp, int) and not isinstance(sp, bool) and sp > 1 and world_size % sp == 0:
        return world_size // sp
    return world_size


def load_deepspeed(config: dict, world_size: int, file: str = "ds_config.json"):
    """``DeepSpeedConfig(config, mpu=...)`` for ``world_size`` ranks; raises EngineError with a readable line."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with _quiet():
        import deepspeed.runtime.config as ds_config_module
    try:
        with _quiet(), mock.patch.object(ds_config_module.dist, "get_rank", return_value=0):
            return ds_config_module.DeepSpeedConfig(copy.deepcopy(config),
                                                    mpu=_DataParallelOnly(ds_batch_world(config, world_size)))
    except AssertionError as exc:
        msg = str(exc).strip() or "assertion failed"
        setting = "train_batch_size" if "batch" in msg.lower() else ""
        raise EngineError(file, setting, f"DeepSpeed refuses it: {msg}") from None
    except Exception as exc:  # pydantic ValidationError, ValueError, ...
        setting, msg = _pydantic_message(exc)
        raise EngineError(file, setting, f"DeepSpeed refuses it: {msg}") from None


@contextlib.contextmanager
def _quiet():
    """Silence DeepSpeed's and accelerate's INFO/WARNING logging while loading configs."""
    import logging

    names = ("DeepSpeed", "deepspeed", "accelerate", "accelerate.utils.dataclasses", "accelerate.commands.launch")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _device(offload) -> str:
    if offload is None:
        return "none"
    dev = offload.device
    return str(getattr(dev, "value", dev))


def ds_summary(cfg) -> dict:
    """What a loaded DeepSpeedConfig says about the run (for reports and the dry-run's expectations)."""
    z = cfg.zero_config
    off_o = _device(z.offload_optimizer)
    off_p = _device(z.offload_param)
    precision = "bf16" if cfg.bfloat16_config.enabled else ("fp16" if cfg.float16_config.enabled else "fp32")
    return {"world_size": cfg.world_size, "zero_stage": int(cfg.zero_optimization_stage),
            "offload_optimizer": off_o, "offload_param": off_p,
            "precision": precision, "train_batch_size": cfg.train_batch_size,
            "micro_batch": cfg.train_micro_batch_size_per_gpu,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps}


# ---------------------------------------------------------------- accelerate

@dataclass
class AccelerateLoad:
    """What accelerate launch makes of a YAML: the parsed ClusterConfig, launch args, child env, plugin."""

    config: Any
    args: Any
    env: dict[str, str]
    plugin: Any
    ds_config_path: str | None
    parallelism: Any = None       # accelerate's ParallelismConfig built from the launch environment (issue 15)


LAUNCH_PREFIXES = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")   # what accelerate launch sets for its children
DS_IGNORED_WITH_FILE = ("gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                        "offload_param_device", "offload_param_nvme_path", "offload_optimizer_nvme_path",
                        "zero3_save_16bit_model", "mixed_precision")


def resolve_ds_path(yaml_path: Path, value: str) -> Path | None:
    """Where accelerate launch would find ``deepspeed_config_file``: relative paths from the working
    directory at launch; we try the YAML's own folder first (where dsadvise writes it), then the CWD."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (yaml_path.parent, Path.cwd()):
        if (base / p).is_file():
            return (base / p).resolve()
    return None


def read_ds_reference(config_path: Path, value: str, reader: str) -> tuple[Path | None, Any, str | None]:
    """The DeepSpeed JSON a config file points to (accelerate's ``deepspeed_config_file``, a framework's
    ``deepspeed:`` key), found as :func:`resolve_ds_path` finds it and parsed: (its path or None, its parsed
    content or None, None or the one-line problem: not found, not readable, not JSON). ``reader`` names who
    reads the reference at launch (for the not-found message). The one reader of such references for ``check``."""
    found = resolve_ds_path(config_path.resolve(), value)
    if found is None:
        return None, None, (f"{value!r} not found next to {config_path.name} or in the current directory ({reader} "
                            "reads it relative to the directory you launch from)")
    try:
        return found, parse_text(found.name, read_text(found), "json"), None
    except ConfigFileError as exc:
        return found, None, str(exc)


def load_accelerate(yaml_path: Path, *, num_processes: int | None = None) -> AccelerateLoad:
    """Run accelerate launch's own config handling on ``yaml_path`` (no process is started): load the file,
    resolve the launch arguments, build each child's environment and the DeepSpeed/FSDP plugin from it.
    Raises EngineError naming the file and setting."""
    file = yaml_path.name
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with _quiet():
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils import launch as launch_utils
    try:
        with _quiet():
            cfg = load_config_from_file(str(yaml_path))
    except Exception as exc:
        raise EngineError(file, "", f"accelerate cannot load it: {_first_line(exc)}") from None
    argv = ["--config_file", str(yaml_path)]
    if num_processes is not None:
        argv += ["--num_processes", str(num_processes)]
    ds_path = None
    dscfg = getattr(cfg, "deepspeed_config", {}) or {}
    if cfg.distributed_type.value == "DEEPSPEED" and dscfg.get("deepspeed_config_file"):
        found = resolve_ds_path(yaml_path, str(dscfg["deepspeed_config_file"]))
        if found is None:
            raise EngineError(file, "deepspeed_config.deepspeed_config_file",
                              f"{dscfg['deepspeed_config_file']!r} not found (accelerate reads it relative to the "
                              f"directory you launch from)")
        ds_path = str(found)
    try:
        # A static check must not depend on this machine's ports: accelerate refuses a busy main_process_port.
        # ... nor on launch variables this process happens to carry (the HF Trainer's argument classes export
        # ACCELERATE_* / FSDP_* into os.environ): accelerate launch computes its children's from the file alone.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_PREFIXES)}
        with _quiet(), mock.patch.object(launch_utils, "is_port_in_use", return_value=False), \
                mock.patch.dict(os.environ, clean, clear=True):
            parser = launch_command_parser()
            args = parser.parse_args(argv + ["train.py"])
            args, defaults, mp_from_config = _validate_launch_command(args)
            if args.use_deepspeed:
                fields = list(defaults.deepspeed_config.keys()) if defaults else []
                if mp_from_config:
                    fields.append("mixed_precision")
                args.deepspeed_fields_from_accelerate_config = ",".join(fields)
                if ds_path:
                    args.deepspeed_config_file = ds_path
                _, env = launch_utils.prepare_deepspeed_cmd_env(args)
            elif args.use_fsdp or args.multi_gpu:
                env = launch_utils.prepare_multi_gpu_env(args)
            else:
                env = launch_utils.prepare_simple_launcher_cmd_env(args)[1]
    except Exception as exc:
        raise EngineError(file, "", f"accelerate launch refuses it: {_first_line(exc)}") from None
    child = {k: v for k, v in env.items() if k.startswith(LAUNCH_PREFIXES)}
    plugin = None
    try:
        with _quiet(), mock.patch.dict(os.environ, child):
            if args.use_deepspeed:
                from accelerate.utils import DeepSpeedPlugin

                plugin = DeepSpeedPlugin()
            elif args.use_fsdp:
                plugin = _fsdp_plugin()
    except Exception as exc:
        setting = "mixed_precision" if "mixed_precision" in str(exc) and args.use_deepspeed else ""
        msg = _first_line(exc)
        if "will be ignored" in str(exc):
            present = [k for k in DS_IGNORED_WITH_FILE if k in dscfg or (k == "mixed_precision" and mp_from_config)]
            setting = ", ".join(present) or setting
            msg = ("accelerate refuses these next to deepspeed_config_file (they belong in the DeepSpeed JSON): "
                   + (", ".join(present) or msg))
        raise EngineError(file, setting, msg) from None
    parallelism = _parallelism_config(child, args, file) if child.get("ACCELERATE_USE_PARALLELISM_CONFIG") else None
    return AccelerateLoad(cfg, args, child, plugin, ds_path, parallelism)


def _parallelism_config(child: dict[str, str], args, file: str):
    """accelerate's ParallelismConfig as each process builds it from the launch environment
    (``PARALLELISM_CONFIG_*``), then accelerate's own ``_validate_accelerator`` for the launch's process count and
    distributed type (accelerate/parallelism_config.py; the stand-in carries only what that check reads)."""
    from types import SimpleNamespace

    try:
        with _quiet(), mock.patch.dict(os.environ, child):
            from accelerate.parallelism_config import ParallelismConfig
            from accelerate.utils import DistributedType

            pc = ParallelismConfig()
            dtype = (DistributedType.DEEPSPEED if args.use_deepspeed else DistributedType.FSDP if args.use_fsdp
                     else DistributedType.MULTI_GPU if args.multi_gpu else DistributedType.NO)
            fsdp2 = bool(args.use_fsdp) and str(getattr(args, "fsdp_version", 1)) == "2"
            n = int(args.num_processes or 1)
            pc._validate_accelerator(SimpleNamespace(multi_device=dtype == DistributedType.MULTI_GPU, num_processes=n,
                                                     is_fsdp2=fsdp2, distributed_type=dtype, is_main_process=False))
            return pc
    except Exception as exc:
        raise EngineError(file, "parallelism_config", f"accelerate refuses it: {_first_line(exc)}") from None


def _fsdp_plugin():
    """accelerate's FullyShardedDataParallelPlugin from the environment; on a machine without GPUs its
    sync_module_states device lookup is pointed at the CPU (it only builds an init function)."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    import accelerate.utils.dataclasses as acc_dc

    if torch.cuda.is_available():
        return FullyShardedDataParallelPlugin()
    with mock.patch.object(acc_dc, "is_cuda_available", return_value=True), \
            mock.patch.object(torch.cuda, "current_device", return_value="cpu"):
        return FullyShardedDataParallelPlugin()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 400 else first[:397] + "..."


# ---------------------------------------------------------------- a whole folder

def _manifest(files: dict[str, str]) -> dict:
    try:
        return json.loads(files.get("dsadvise.json", "{}"))
    except ValueError:
        return {}


def validate_files(files: dict[str, str] | Path, *, engines: bool = True) -> list[Step]:
    """Check a rendered set (name → text, or a folder): parse, schema, and (``engines``) load in accelerate and
    DeepSpeed for the world size the YAML gives. Returns one Step per check; a failed step has findings."""
    if isinstance(files, Path):
        folder = files
        files = {p.name: read_text(p) for p in sorted(folder.iterdir()) if p.is_file()}
    else:
        folder = None
    steps: list[Step] = []

    t = time.perf_counter()
    parsed: dict[str, Any] = {}
    step = Step("parse")
    for name, text in files.items():
        try:
            parsed[name] = parse_text(name, text)
        except ConfigFileError as exc:
            step.findings.append(Finding("error", name, "", str(exc).split(": ", 1)[-1]))
        if name.endswith(SHELL_FILES):
            step.findings += check_shell(name, text)
        if name == "hostfile":
            step.findings += check_hostfile(name, text)
    step.detail = f"{len(files)} files"
    steps.append(_finish(step, t))

    t = time.perf_counter()
    step = Step("schema")
    if "accelerate_config.yaml" in parsed:
        step.findings += schema_findings("accelerate", parsed["accelerate_config.yaml"], "accelerate_config.yaml")
    if "ds_config.json" in parsed:
        step.findings += schema_findings("deepspeed", parsed["ds_config.json"], "ds_config.json")
    steps.append(_finish(step, t))

    if not engines:
        return steps
    yaml_data = parsed.get("accelerate_config.yaml")
    if not isinstance(yaml_data, dict):
        steps.append(Step("engines", StepStatus.SKIP, detail="no accelerate_config.yaml"))
        return steps
    with contextlib.ExitStack() as stack:
        if folder is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dsadvise-validate-")))
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            folder = tmp
        steps += engine_steps(folder, parsed, _manifest(files))
    return steps


def engine_steps(folder: Path, parsed: dict[str, Any], manifest: dict,
                 num_processes: int | None = None) -> list[Step]:
    """Load accelerate_config.yaml with accelerate and ds_config.json with DeepSpeed (for the YAML's world)."""
    steps = []
    t = time.perf_counter()
    step = Step("accelerate loads accelerate_config.yaml")
    loaded = None
    try:
        loaded = load_accelerate(folder / "accelerate_config.yaml", num_processes=num_processes)
        c = loaded.config
        step.detail = (f"{c.distributed_type.value}, {c.num_processes} processes on {c.num_machines} machine(s)"
                       + (f", mixed_precision {c.mixed_precision}" if c.mixed_precision else ""))
        if loaded.plugin is not None:
            step.detail += f", {type(loaded.plugin).__name__} built from the launch environment"
        if loaded.parallelism is not None:
            pc = loaded.parallelism
            backend = pc.sp_backend if pc.sp_size > 1 else pc.cp_backend
            step.detail += (f", ParallelismConfig dp_replicate {pc.dp_replicate_size} x dp_shard {pc.dp_shard_size} x "
                            f"tp {pc.tp_size} x cp {pc.cp_size} x sp {pc.sp_size} ({backend})")
    except EngineError as exc:
        step.findings.append(Finding("error", exc.file, exc.setting, exc.message))
    except ImportError as exc:
        step.status, step.detail = StepStatus.SKIP, f"accelerate is not importable here ({exc})"
    except Exception as exc:
        step.findings.append(Finding("error", "accelerate_config.yaml", "", _first_line(exc)))
    steps.append(_finish(step, t))

    ds = parsed.get("ds_config.json")
    if isinstance(ds, dict):
        t = time.perf_counter()
        world = (loaded.config.num_processes if loaded is not None
                 else int(parsed.get("accelerate_config.yaml", {}).get("num_processes", 1) or 1))
        step = Step(f"DeepSpeed loads ds_config.json (world size {world})")
        training = manifest.get("training", {})
        hidden = manifest.get("model", {}).get("architecture", {}).get("hidden_size")
        cfg, filled = fill_auto(ds, micro_batch=training.get("micro_batch_size", 1),
                                gradient_accumulation_steps=manifest.get("gradient_accumulation_steps", 1),
                                hidden_size=hidden)
        try:
            loaded_ds = load_deepspeed(cfg, world)
            s = ds_summary(loaded_ds)
            bw = ds_batch_world(cfg, world)
            step.detail = (f"ZeRO-{s['zero_stage']}, {s['precision']}, train_batch_size {s['train_batch_size']} = "
                           f"{s['micro_batch']} x {s['gradient_accumulation_steps']} x {bw}"
                           + (f" (world {world} / sequence_parallel_size)" if bw != world else "")
                           + f", offload optimizer {s['offload_optimizer']}, param {s['offload_param']}")
            tpc = loaded_ds.tensor_parallel_config
            if tpc.autotp_size > 1:
                step.detail += f", AutoTP autotp_size {tpc.autotp_size}"
            if filled:
                step.detail += "; 'auto' filled as the HF Trainer would: " + ", ".join(filled)
        except EngineError as exc:
            step.findings.append(Finding("error", exc.file, exc.setting, exc.message))
        except ImportError as exc:
            step.status, step.detail = StepStatus.SKIP, f"DeepSpeed is not importable here ({exc})"
        except Exception as exc:
            step.findings.append(Finding("error", "ds_config.json", "", _first_line(exc)))
        steps.append(_finish(step, t))
    return steps


def _finish(step: Step, t0: float) -> Step:
    step.seconds = time.perf_counter() - t0
    if any(f.severity == "error" for f in step.findings) and step.status == StepStatus.PASS:
        step.status = StepStatus.FAIL
    return step


def errors_of(steps: list[Step]) -> list[Finding]:
    return [f for s in steps for f in s.findings if f.severity == "error"]
