"""Reading a pipeline recipe: YAML → validated stage Configs, every error naming its line.

A recipe::

    name: mobilenetv2-digits          # default output folder: runs/<name>
    data: digits                      # given to every stage whose Config has a `data` option
    model: mobilenet_v2               # the train stage's architecture
    defaults: {data_seed: 0}          # any option, given to every stage whose Config has it
    stages:
      - train: {epochs: 10}
      - prune: {name: pruned, ratio: 0.5, finetune: 6}
      - export: {name: base_onnx, input: train}
      - export: {input: pruned}
      - quantize: {int8: true}
      - bench: {batch: [1, 8]}

Each stage is a one-key mapping: the stage type, then its options, which are the same as the
command's flags (``--kmeans-bits 4`` → ``kmeans_bits: 4``) plus these pipeline keys:
``name`` (its output is OUT/<name>.<ext>; default the type, numbered when repeated), ``input``
(an earlier stage's name or a file; default the latest output the stage can take), ``teacher``
(distill: a stage or a file; default the train stage's output) and ``models`` (bench: stages or
files; default every model the pipeline produced). Everything is checked before any work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .stages import MODEL_SUFFIXES, STAGE_TYPES, StageType

RECIPE_KEYS = ("name", "description", "data", "model", "defaults", "out", "stages")
PIPELINE_KEYS = ("name", "input", "teacher", "models")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Stage:
    """One validated stage of a recipe."""

    name: str
    type: StageType
    line: int
    options: dict[str, Any]  # the recipe's own options (defaults merged), as written
    config: Any  # the validated StageConfig
    input: str | None = None  # a stage name or a file path (None: no input / resolved later)
    input_given: bool = False
    teacher: str | None = None
    models: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str | None:
        return self.type.mode(self.config)

    @property
    def output_suffix(self) -> str:
        return self.type.output_suffix(self.config)


@dataclass
class Recipe:
    name: str
    path: Path
    text: str
    sha256: str
    out: str | None
    description: str | None
    stages: list[Stage]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "text": self.text,
                "description": self.description}


def _yaml_tree(text: str, where: str):
    """The YAML node tree (which keeps line numbers) and the plain Python value."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}{at}: not valid YAML: {problem}") from None
    return node, value


def _line(node) -> int:
    return node.start_mark.line + 1


def _key_lines(mapping_node) -> dict[str, int]:
    """The line of each key of a YAML mapping node."""
    if mapping_node is None or not hasattr(mapping_node, "value") or not isinstance(mapping_node.value, list):
        return {}
    return {str(k.value): _line(k) for k, _v in mapping_node.value if hasattr(k, "value")}


def _value_node(mapping_node, key: str):
    for k, v in mapping_node.value:
        if getattr(k, "value", None) == key:
            return v
    return None


def _error_line(message: str, key_lines: dict[str, int], default: int, cls=None) -> int:
    """The line of the option an error message names (by key, flag or label), else ``default``."""
    from ..config import flag_name

    fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    names: list[tuple[str, int]] = []
    for key, line in key_lines.items():
        names.append((key, line))
        if key in fields:
            names.append((flag_name(fields[key]), line))
            if fields[key].metadata.get("label"):
                names.append((fields[key].metadata["label"], line))
    for name, line in sorted(names, key=lambda nl: -len(nl[0])):
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message):
            return line
    return default


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every stage's Config is built (and validated) here."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read recipe {path}: {e}") from None
    return parse_recipe(text, path)


def parse_recipe(text: str, path: str | Path = "<recipe>") -> Recipe:
    path = Path(path)
    where = str(path)
    node, doc = _yaml_tree(text, where)
    if not isinstance(doc, dict):
        raise UserError(f"{where}: a recipe is a mapping with a `stages` list (see recipes/ for examples)")
    top = _key_lines(node)
    unknown = [k for k in doc if k not in RECIPE_KEYS]
    if unknown:
        k = unknown[0]
        raise UserError(f"{where}:{top.get(str(k), 1)}: unknown recipe key {k!r}; known: {', '.join(RECIPE_KEYS)}")
    for key in ("name", "description", "data", "model", "out"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise UserError(f"{where}:{top[key]}: {key} must be a string, got {doc[key]!r}")
    name = doc.get("name") or path.stem
    if not _NAME.fullmatch(str(name)):
        raise UserError(f"{where}:{top.get('name', 1)}: name {name!r} must be letters, digits, '_', '.' or '-'")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"{where}:{top['defaults']}: defaults must be a mapping of options")
    if doc.get("data") is not None:
        defaults = {"data": doc["data"], **defaults}
    stages_value = doc.get("stages")
    if not isinstance(stages_value, list) or not stages_value:
        raise UserError(f"{where}:{top.get('stages', 1)}: `stages` must be a non-empty list, e.g. "
                        f"`stages: [{{train: {{epochs: 5}}}}, {{export: {{}}}}]`")
    stages_node = _value_node(node, "stages")
    stages: list[Stage] = []
    counts: dict[str, int] = {}
    for item, item_node in zip(stages_value, stages_node.value):
        stages.append(_stage(item, item_node, where, defaults, doc.get("model"), stages, counts))
    _check_references(stages, where)
    return Recipe(name=str(name), path=path, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(),
                  out=doc.get("out"), description=doc.get("description"), stages=stages)


def _stage(item: Any, item_node, where: str, defaults: dict, model: str | None, earlier: list[Stage],
           counts: dict[str, int]) -> Stage:
    line = _line(item_node)
    if not isinstance(item, dict) or len(item) != 1:
        raise UserError(f"{where}:{line}: a stage is a one-key mapping, `- TYPE: {{options}}` "
                        f"(types: {', '.join(STAGE_TYPES)})")
    ((type_name, options),) = item.items()
    if type_name not in STAGE_TYPES:
        raise UserError(f"{where}:{line}: unknown stage {type_name!r}; stages: {', '.join(STAGE_TYPES)}")
    stype = STAGE_TYPES[type_name]
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise UserError(f"{where}:{line}: the options of {type_name} must be a mapping, got {options!r}")
    key_lines = _key_lines(_value_node(item_node, type_name))
    counts[type_name] = counts.get(type_name, 0) + 1
    name = options.get("name") or (type_name if counts[type_name] == 1 else f"{type_name}_{counts[type_name]}")
    at = f"{where}:{key_lines.get('name', line)}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"{at}: stage name {name!r} must be letters, digits, '_', '.' or '-'")
    if any(s.name == name for s in earlier):
        raise UserError(f"{at}: two stages are named {name!r}; give one a `name:`")
    cls = stype.config_class()
    fields = {f.name for f in dataclasses.fields(cls)}
    own = {k: v for k, v in options.items() if k not in PIPELINE_KEYS}
    for key in options:
        if key in PIPELINE_KEYS and key != "name" and key not in stype.pipeline_keys:
            raise UserError(f"{where}:{key_lines.get(key, line)}: {type_name} takes no `{key}`")
    if stype.name == "distill" and "student" in own:
        raise UserError(f"{where}:{key_lines['student']}: distill: give the student to fine-tune as `input:` "
                        f"(a stage or a file), or a new one's architecture as `model:`")
    inherited = {k: v for k, v in defaults.items() if k in fields and k not in own}
    if type_name == "train" and model is not None and "model" not in own:
        inherited["model"] = model
    unknown = sorted(set(own) - fields)
    if unknown:
        raise UserError(f"{where}:{key_lines.get(unknown[0], line)}: {type_name}: unknown option {unknown[0]!r}; "
                        f"known: {', '.join(sorted(fields | set(stype.pipeline_keys)))}")
    stage_where = f"{where}:{line}: {type_name} {name!r}"
    try:
        config = cls.from_dict({**inherited, **own, **stype.placeholders(own)}, where=stage_where)
    except UserError as e:
        message = str(e)
        bad = _error_line(message, key_lines, line, cls)
        if message.startswith(stage_where):
            message = message[len(stage_where):].lstrip(": ")
        raise UserError(f"{where}:{bad}: {type_name} {name!r}: {message}") from None
    stype.check(config, f"{where}:{line}: {type_name} {name!r}")
    models = options.get("models") or []
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise UserError(f"{where}:{key_lines.get('models', line)}: models must be a list of stage names or files")
    for key in ("input", "teacher"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise UserError(f"{where}:{key_lines.get(key, line)}: {key} must be a stage name or a file path")
    return Stage(name=name, type=stype, line=line, options={**inherited, **own}, config=config,
                 input=options.get("input"), input_given=options.get("input") is not None,
                 teacher=options.get("teacher"), models=list(models))


def _check_references(stages: list[Stage], where: str) -> None:
    """Every `input`/`teacher`/`models` entry names an earlier stage (or is a file that exists),
    and a default input exists for every stage that needs one."""
    for i, s in enumerate(stages):
        before = stages[:i]
        names = {b.name: b for b in before}
        refs = ([("input", s.input)] if s.input else []) + ([("teacher", s.teacher)] if s.teacher else []) + \
            [("models", m) for m in s.models]
        for key, ref in refs:
            if any(b.name == ref for b in stages[i:]):
                raise UserError(f"{where}:{s.line}: {s.name}: {key} {ref!r} is a later stage; a stage can only "
                                f"use the outputs of stages before it")
            if ref in names:
                accepts = s.type.accepts(s.config) if key == "input" else (".safetensors",)
                if key != "models" and names[ref].output_suffix not in accepts:
                    raise UserError(f"{where}:{s.line}: {s.name}: {key} {ref!r} makes a {names[ref].output_suffix} "
                                    f"file; {s.type.name} takes {' or '.join(accepts)}")
                if key == "models" and names[ref].output_suffix not in MODEL_SUFFIXES:
                    raise UserError(f"{where}:{s.line}: {s.name}: {ref!r} makes no model to bench")
            elif not Path(ref).is_file():
                raise UserError(f"{where}:{s.line}: {s.name}: {key} {ref!r} is neither an earlier stage "
                                f"({', '.join(names) or 'none yet'}) nor an existing file")
        needs = s.type.needs_input(s.config)
        if needs and not s.input:
            accepts = s.type.accepts(s.config)
            if not any(b.output_suffix in accepts for b in before):
                raise UserError(f"{where}:{s.line}: {s.name}: {s.type.name} needs an input ({' or '.join(accepts)}) "
                                f"and no earlier stage makes one; give `input: FILE`")
        if s.type.name == "distill" and not s.teacher and not any(b.type.name == "train" for b in before):
            raise UserError(f"{where}:{s.line}: {s.name}: distill needs `teacher:` (a stage or a file) when no "
                            f"train stage comes before it")
