"""Reading rule files: YAML -> JSON Schema validation -> parsed, type-checked, conflict-checked rules.

Every problem is one :class:`RuleError` line naming the file, the rule (by id, or ``#n`` when it has no
usable id) and the field, e.g. ``rules/offload.yaml: rule 'nvme-needs-path': when: unknown fact
'hardware.nvme' at column 1 (did you mean hardware.nvme_path?)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from ..datacache import cached
from ..datafiles import DATA_DIR, parse_yaml
from ..errors import did_you_mean
from .engine import EFFECTS, FORMATS, PLACEHOLDER, Rule, RuleSet, Template
from .errors import RuleConflictError, RuleError
from .evaluate import check, compile_expression, kind_of, parse_type
from .nodes import Literal
from .parser import parse_expression

SCHEMA_PATH = DATA_DIR / "rules.schema.json"


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


@lru_cache(maxsize=1)
def _validation_code() -> tuple[bytes, ...]:
    """What a validated rule file depends on besides its text: the schema and the checking code (cache key)."""
    here = Path(__file__).resolve().parent
    return (SCHEMA_PATH.read_bytes(), (here / "loader.py").read_bytes(), (here / "engine.py").read_bytes())


def _parse_and_validate(text: str, name: str) -> dict:
    """A rule file's YAML text -> a document valid against the schema (RuleError naming ``name`` if not)."""
    import yaml

    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleError(f"not valid YAML: {where}{problem}", file=name) from None
    if doc is None:
        doc = {"rules": []}
    validate_document(doc, name)
    return doc


def _field_path(parts: Iterable[object]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_message(err) -> str:
    """A short, specific sentence for one jsonschema error."""
    v = err.validator
    if v == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed] if isinstance(err.instance, dict) else []
        name = extra[0] if extra else "?"
        return f"unknown field {name!r}{did_you_mean(str(name), allowed)}; allowed: {', '.join(allowed)}"
    if v == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return f"missing required field {missing[0]!r}" if missing else err.message
    if v == "enum":
        return f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
    if v == "oneOf" and isinstance(err.instance, (str, int, list)) and not isinstance(err.instance, bool):
        # a setting value: one of the enum or a list of them
        enum = err.schema["oneOf"][0].get("enum")
        if enum is not None:
            return f"{err.instance!r} is not one of {', '.join(map(repr, enum))} (or a list of them)"
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        kind = kind_of(err.instance)
        got = kind if kind != "other" else type(err.instance).__name__
        return f"expected {want}, got {got} {err.instance!r}"
    if v == "pattern" and err.path and err.path[-1] == "id":
        return (f"{err.instance!r} is not a valid id (lower-case letters, digits and '-', starting with a letter "
                f"or digit)")
    return err.message


def _rule_label(doc: object, index: int) -> str:
    if isinstance(doc, dict):
        rules = doc.get("rules")
        if isinstance(rules, list) and 0 <= index < len(rules):
            rid = rules[index].get("id") if isinstance(rules[index], dict) else None
            if isinstance(rid, str) and rid:
                return rid
    return f"#{index + 1}"


def _check_effects(doc: dict, file: str) -> None:
    """Exactly one effect per rule, said plainly (the schema's oneOf would only say 'not valid')."""
    for i, raw in enumerate(doc.get("rules") or []):
        if not isinstance(raw, dict):
            continue
        present = [e for e in EFFECTS if e in raw]
        label = _rule_label(doc, i)
        if not present:
            near = [k for k in raw if k not in ("id", "description", "when", "priority")]
            hint = did_you_mean(str(near[0]), EFFECTS) if near else ""
            raise RuleError(f"no effect: give one of {', '.join(EFFECTS)}{hint}", file=file, rule=label)
        if len(present) > 1:
            raise RuleError(f"several effects ({', '.join(present)}): give one effect per rule (split it in two)",
                            file=file, rule=label)


def validate_document(doc: object, file: str) -> None:
    """Validate a parsed rule file against ``advisor/data/rules.schema.json``; first error as RuleError."""
    if not isinstance(doc, dict):
        raise RuleError(f"expected a mapping with a 'rules' list, got {type(doc).__name__}", file=file)
    _check_effects(doc, file)
    errors = sorted(_validator().iter_errors(doc), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if not errors:
        return
    # Prefer the most specific (deepest) error at the first failing place.
    first_path = list(errors[0].absolute_path)
    err = errors[0]
    for e in errors:
        if list(e.absolute_path)[:len(first_path)] == first_path and len(e.absolute_path) >= len(err.absolute_path):
            err = e
    if err.validator == "oneOf" and err.context:
        deeper = sorted(err.context, key=lambda e: -len(e.absolute_path))
        if deeper and deeper[0].validator not in ("type", "enum", "oneOf") and len(deeper[0].absolute_path) > \
                len(err.absolute_path):
            err = deeper[0]
    path = list(err.absolute_path)
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        raise RuleError(_schema_message(err), file=file, rule=_rule_label(doc, path[1]),
                        field=_field_path(path[2:]) or None)
    raise RuleError(_schema_message(err), file=file, field=_field_path(path) or None)


def _flatten_constants(raw: Mapping[str, object], prefix: str = "const") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(_flatten_constants(v, key))
        else:
            out[key] = v
    return out


def _type_of_constant(value: object) -> str:
    return {"number": "number", "string": "string", "bool": "bool"}[kind_of(value)]


def _settings(raw: Mapping[str, object], domains: Mapping[str, Sequence[object]], file: str, rule: str,
              effect: str) -> dict[str, frozenset]:
    out: dict[str, frozenset] = {}
    for setting, value in raw.items():
        if setting not in domains:
            raise RuleError(f"unknown setting {setting!r}{did_you_mean(setting, domains)}", file=file, rule=rule,
                            field=effect)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in domains[setting] or isinstance(v, bool):
                raise RuleError(f"{v!r} is not a value of {setting} ({', '.join(map(str, domains[setting]))})",
                                file=file, rule=rule, field=f"{effect}.{setting}")
        out[setting] = frozenset(values)
    return out


def _build_rule(raw: dict, index: int, file: str, catalog: Mapping[str, frozenset],
                domains: Mapping[str, Sequence[object]]) -> Rule:
    rid = raw["id"]
    when_raw = raw["when"]
    try:
        node = parse_expression(when_raw) if isinstance(when_raw, str) else Literal(bool(when_raw))
        kinds = check(node, catalog)
    except RuleError as exc:
        raise exc.located(file=file, rule=rid, field="when") from None
    if not kinds & {"bool", "null"} and kinds != frozenset():
        raise RuleError(f"the condition gives {' or '.join(sorted(kinds))}, not true or false: {when_raw!r}",
                        file=file, rule=rid, field="when")
    effect = next(e for e in EFFECTS if e in raw)
    settings: dict[str, frozenset] = {}
    factor = 1.0
    message: Template | None = None
    if effect in ("require", "forbid"):
        settings = _settings(raw[effect], domains, file, rid, effect)
    elif effect in ("prefer", "penalise"):
        factor = float(raw[effect]["factor"])
    else:
        message = Template(raw[effect])
    used = set()
    from .nodes import facts_used

    used |= facts_used(node)
    for text_field in ("description",) + ((effect,) if message else ()):
        text = raw[text_field]
        for m in PLACEHOLDER.finditer(text):
            name, fmt = m.group(1), m.group(2)
            if name not in catalog:
                raise RuleError(f"unknown fact {name!r} in placeholder {m.group(0)}{did_you_mean(name, catalog)}",
                                file=file, rule=rid, field=text_field)
            if fmt is not None and fmt not in FORMATS:
                raise RuleError(f"unknown format {fmt!r} in placeholder {m.group(0)}; formats: {', '.join(FORMATS)}",
                                file=file, rule=rid, field=text_field)
            used.add(name)
    return Rule(id=rid, description=raw["description"], file=file, index=index, priority=int(raw.get("priority", 0)),
                when=compile_expression(node), effect=effect, settings=settings, factor=factor, message=message,
                facts=frozenset(used))


def _check_static_conflicts(rules: Sequence[Rule], domains: Mapping[str, Sequence[object]]) -> None:
    """Rules with the same condition and priority that contradict on a setting can never both hold: error now."""
    by_when: dict[tuple[str, int], list[Rule]] = {}
    for r in rules:
        if r.effect in ("require", "forbid"):
            by_when.setdefault((r.when_text, r.priority), []).append(r)
    for group in by_when.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                for setting in set(a.settings) & set(b.settings):
                    full = frozenset(domains[setting])
                    adm_a = full & a.settings[setting] if a.effect == "require" else full - a.settings[setting]
                    adm_b = full & b.settings[setting] if b.effect == "require" else full - b.settings[setting]
                    if not (adm_a & adm_b):
                        raise RuleConflictError(
                            f"rules {a.id!r} ({a.file}) and {b.id!r} ({b.file}) have the same condition and "
                            f"priority {a.priority} but contradict each other on {setting!r}; change the priority "
                            f"of one of them", file=b.file, rule=b.id)


def display_name(path: Path, root: Path | None) -> str:
    """How a rule file is named in messages and ``rules_fired``: relative to ``root`` when inside it."""
    if root is not None:
        try:
            return f"rules/{path.resolve().relative_to(root.resolve()).as_posix()}"
        except ValueError:
            pass
    return str(path)


def rule_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.yaml`` / ``*.yml`` files named or inside the folders named, sorted within each folder."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file()))
        else:
            out.append(p)
    return out


def load_rules(paths: Iterable[str | Path], *, catalog: Mapping[str, str], domains: Mapping[str, Sequence[object]],
               bundled_root: Path | None = None) -> RuleSet:
    """Load, validate and check every rule file; ``catalog`` maps fact names to type specs.

    ``domains`` lists the values of each setting ``require``/``forbid`` may name. Constants declared in
    the files join the catalog as ``const.<name>``. Files under ``bundled_root`` are displayed as
    ``rules/<name>``.
    """
    docs: list[tuple[str, dict]] = []
    for path in rule_files(paths):
        name = display_name(path, bundled_root)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RuleError("no such rule file", file=name) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError(f"cannot read ({type(exc).__name__}: {exc})", file=name) from None
        doc = cached("rules", (text, *_validation_code()), lambda: _parse_and_validate(text, name))
        docs.append((name, doc))

    constants: dict[str, object] = {}
    const_from: dict[str, str] = {}
    for name, doc in docs:
        for key, value in _flatten_constants(doc.get("constants") or {}).items():
            if key in constants:
                raise RuleError(f"constant {key!r} is already defined in {const_from[key]}", file=name,
                                field="constants")
            constants[key] = value
            const_from[key] = name

    full_catalog = {k: parse_type(v) for k, v in catalog.items()}
    full_catalog.update({k: parse_type(_type_of_constant(v)) for k, v in constants.items()})
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for name, doc in docs:
        for i, raw in enumerate(doc.get("rules") or []):
            rid = raw["id"]
            if rid in seen:
                raise RuleError(f"duplicate rule id (first defined in {seen[rid]})", file=name, rule=rid, field="id")
            seen[rid] = name
            rules.append(_build_rule(raw, i, name, full_catalog, domains))
    _check_static_conflicts(rules, domains)
    return RuleSet(rules=rules, constants=constants, files=[n for n, _ in docs])
