"""Load and validate config.yaml.

Validation collects every problem at once, each naming its key
(``At 'index.trees': 0 is less than the minimum of 1``). Relative paths are
taken relative to the folder of the config file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ConfigError

DEFAULT_MODEL = Path(str(resources.files(__package__) / "models" / "default.keras"))


@dataclass(frozen=True)
class ImageSettings:
    size: int | None  # None: whatever the model reads
    color: str | None
    max_pixels: int


@dataclass(frozen=True)
class IndexSettings:
    metric: str
    trees: int
    search_k: int
    rebuild_interval_s: float
    rebuild_share: float
    exact_below: int
    dims: int
    candidates: int
    rescore: int


@dataclass(frozen=True)
class Config:
    source: Path
    inbox: Path
    query_dir: Path | None
    state_dir: Path
    model: Path
    image: ImageSettings
    index: IndexSettings
    neighbors: int
    strictness: str  # of near-duplicates: strict, normal or loose (core.copies.LEVELS)
    settle_s: float
    rescan_interval_s: float
    watch_mode: str  # auto, events or poll
    poll_interval_s: float
    exclude: tuple[str, ...]
    batch_size: int
    decode_threads: int
    log_level: str

    def summary(self) -> str:
        query = f", queries {self.query_dir}" if self.query_dir else ""
        return (f"inbox {self.inbox}{query}, state {self.state_dir}, model {self.model.name}, "
                f"{self.neighbors} neighbours, {self.index.trees} trees ({self.index.metric})")


@cache
def schema() -> dict[str, Any]:
    text = (resources.files(__package__) / "schema.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def load(path: Path) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{path}: cannot read: {error}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError([f"{path}: not valid YAML{line}: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: must be a mapping of keys to values"])
    problems = validate(raw)
    if problems:
        raise ConfigError(problems)
    settings = with_defaults(raw, schema())
    config = build(settings, path.resolve().parent, path)
    problems = cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def validate(raw: dict[str, Any]) -> list[str]:
    """Every schema violation in `raw`, each as one line that names its key."""
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.path))):
        problems.extend(describe(error))
    # jsonschema reports each missing required key as its own error, and `describe`
    # names every missing key of the object for each: say each once.
    return list(dict.fromkeys(problems))


def describe(error: jsonschema.ValidationError) -> list[str]:
    where = ".".join(str(part) for part in error.path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return [f"At '{key_path(where, key)}': unknown key (known here: {', '.join(known)})"
                for key in extra]
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        return [f"At '{key_path(where, key)}': is required" for key in missing]
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return [f"At '{where}': must be of type {wanted}, not {error.instance!r}"]
    return [f"At '{where}': {error.message}"]


def key_path(parent: str, key: str) -> str:
    """The dotted name of `key` inside the key `parent` ("" at the top)."""
    return f"{parent}.{key}" if parent else key


def with_defaults(raw: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with every absent key set to its schema default."""
    filled = dict(raw)
    for key, spec in node.get("properties", {}).items():
        if key not in filled and "default" in spec:
            filled[key] = spec["default"]
        if spec.get("type") == "object" and isinstance(filled.get(key), dict):
            filled[key] = with_defaults(filled[key], spec)
    return filled


def build(settings: dict[str, Any], base: Path, source: Path) -> Config:
    def folder(value: str) -> Path:
        return (base / Path(value).expanduser()).resolve()

    image, index = settings["image"], settings["index"]
    return Config(
        source=source,
        inbox=folder(settings["inbox"]),
        query_dir=folder(settings["query_dir"]) if settings["query_dir"] else None,
        state_dir=folder(settings["state_dir"]),
        model=folder(settings["model"]) if settings["model"] else DEFAULT_MODEL,
        image=ImageSettings(image["size"], image["color"], image["max_pixels"]),
        index=IndexSettings(index["metric"], index["trees"], index["search_k"],
                            float(index["rebuild_interval_s"]), float(index["rebuild_share"]),
                            index["exact_below"], index["dims"], index["candidates"],
                            index["rescore"]),
        neighbors=settings["search"]["neighbors"],
        strictness=settings["duplicates"]["strictness"],
        settle_s=float(settings["watch"]["settle_s"]),
        rescan_interval_s=float(settings["watch"]["rescan_interval_s"]),
        watch_mode=settings["watch"]["mode"],
        poll_interval_s=float(settings["watch"]["poll_interval_s"]),
        exclude=tuple(settings["watch"]["exclude"]),
        batch_size=settings["ingest"]["batch_size"],
        decode_threads=settings["ingest"]["decode_threads"],
        log_level=settings["log_level"],
    )


def cross_check(config: Config) -> list[str]:
    """Problems that span keys: folders that overlap, a model that is not there."""
    problems = []
    if nested(config.state_dir, config.inbox):
        problems.append("At 'state_dir': must not be inside or contain 'inbox'")
    if config.query_dir is not None:
        if nested(config.query_dir, config.inbox):
            problems.append("At 'query_dir': must not be inside or contain 'inbox'")
        if nested(config.state_dir, config.query_dir):
            problems.append("At 'state_dir': must not be inside or contain 'query_dir'")
    if config.model.suffix != ".keras":
        problems.append(f"At 'model': must be a .keras file, not {config.model.name}")
    elif not config.model.is_file():
        problems.append(f"At 'model': no such file: {config.model}")
    return problems


def check_encoder(config: Config, side: int, color: str) -> None:
    """Refuse an encoder that reads side x side `color` images when `image.size` or
    `image.color` says otherwise."""
    problems = []
    if config.image.size not in (None, side):
        problems.append(f"At 'image.size': {config.image.size}, but the encoder reads "
                        f"{side}x{side} images")
    if config.image.color not in (None, color):
        problems.append(f"At 'image.color': {config.image.color}, but the encoder reads "
                        f"{color} images")
    if problems:
        raise ConfigError(problems)


def nested(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)
