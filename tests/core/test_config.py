"""Loading and validating config.yaml: every problem at once, each naming its key."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lookalike.core import config as configuration
from lookalike.core.config import DEFAULT_MODEL
from lookalike.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]  # the repository: config.yaml, README.md


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """An encoder file for the config to name (the config only checks that it is there)."""
    path = tmp_path / "models" / "encoder.keras"
    path.parent.mkdir()
    path.write_bytes(b"a .keras file; config.load does not open it")
    return path


def write(folder: Path, settings: Any, name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        configuration.load(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def keys_named(problems: list[str]) -> list[str]:
    """The key each problem names, from its `At '<key>': ...` prefix."""
    named = []
    for problem in problems:
        match = re.match(r"At '([^']+)': ", problem)
        assert match, f"names no key: {problem}"
        named.append(match.group(1))
    return named


def test_good_config_resolves_paths_against_its_folder(
        tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "etc", {"inbox": "../photos", "query_dir": "queries",
                                      "state_dir": "./state", "model": "../models/encoder.keras",
                                      "index": {"trees": 5}, "watch": {"exclude": ["*.tmp"]}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the config file, not to the working folder
    config = configuration.load(source)
    assert config.source == source
    assert config.inbox == (tmp_path / "photos").resolve()
    assert config.query_dir == (tmp_path / "etc" / "queries").resolve()
    assert config.state_dir == (tmp_path / "etc" / "state").resolve()
    assert config.model == model_file.resolve()
    assert config.index.trees == 5
    assert config.exclude == ("*.tmp",)
    assert str(config.inbox) in config.summary()


def test_defaults_are_applied(tmp_path: Path, model_file: Path) -> None:
    config = configuration.load(write(tmp_path, {"inbox": "in", "state_dir": "st",
                                                 "model": str(model_file)}))
    assert config.query_dir is None
    assert config.image == configuration.ImageSettings(size=None, color=None,
                                                       max_pixels=150_000_000)
    assert (config.index.metric, config.index.trees, config.index.search_k,
            config.index.rebuild_interval_s, config.index.dims, config.index.candidates,
            config.index.rescore) == ("angular", 8, 8000, 60.0, 128, 640, 192)
    assert config.neighbors == 12
    assert config.index.rebuild_share == 0.1
    assert (config.settle_s, config.rescan_interval_s) == (2.0, 600.0)
    assert config.exclude == ()
    assert (config.batch_size, config.decode_threads) == (64, 2)
    assert config.log_level == "info"
    # Defaults of nested keys are filled in even when the section is given in part.
    partial = configuration.load(write(tmp_path, {"inbox": "in", "state_dir": "st",
                                                  "model": str(model_file),
                                                  "index": {"metric": "euclidean"}}))
    assert (partial.index.metric, partial.index.trees) == ("euclidean", 8)


def test_schema_gives_every_key_a_default_and_a_description() -> None:
    def defaults(node: dict[str, Any]) -> None:
        for key, spec in node.get("properties", {}).items():
            assert "default" in spec or key in node.get("required", []), key
            assert "description" in spec or spec.get("type") == "object", key
            defaults(spec)

    defaults(configuration.schema())


def test_absolute_paths_and_home_are_kept(tmp_path: Path, model_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = configuration.load(write(tmp_path / "etc", {
        "inbox": str(tmp_path / "abs-inbox"), "state_dir": "~/state", "model": str(model_file)}))
    assert config.inbox == (tmp_path / "abs-inbox").resolve()
    assert config.state_dir == (tmp_path / "home" / "state").resolve()


@pytest.mark.parametrize("model", ["", None])
def test_empty_model_means_the_shipped_default(tmp_path: Path, model: str | None) -> None:
    assert DEFAULT_MODEL.name == "default.keras"
    assert DEFAULT_MODEL.parent.name == "models"
    assert DEFAULT_MODEL.parent.parent.name == "core"
    source = write(tmp_path, {"inbox": "in", "state_dir": "st", "model": model})
    if DEFAULT_MODEL.is_file():
        assert configuration.load(source).model == DEFAULT_MODEL
    else:  # not shipped yet: the problem names the default path, so it was the one chosen
        assert problems_of(source) == [f"At 'model': no such file: {DEFAULT_MODEL}"]


def test_empty_query_dir_means_none(tmp_path: Path, model_file: Path) -> None:
    config = configuration.load(write(tmp_path, {"inbox": "in", "state_dir": "st",
                                                 "query_dir": "", "model": str(model_file)}))
    assert config.query_dir is None


def test_every_problem_is_reported_at_once_naming_its_key(tmp_path: Path) -> None:
    source = write(tmp_path, {
        "state_dir": 7,                                    # wrong type
        "inbx": "./inbox",                                 # unknown key (inbox missing)
        "image": {"size": 50, "color": "sepia", "max_pixels": 0},
        "index": {"trees": 0, "metric": "cosine", "search_k": "many", "tres": 3},
        "search": {"neighbors": 1001},
        "watch": {"settle_s": -1, "exclude": ["ok", ""]},
        "ingest": {"batch_size": 0, "decode_threads": 1.5},
        "log_level": "loud",
    })
    problems = problems_of(source)
    assert sorted(keys_named(problems)) == sorted([
        "inbox", "inbx", "state_dir",
        "image.size", "image.color", "image.max_pixels",
        "index.trees", "index.metric", "index.search_k", "index.tres",
        "search.neighbors", "watch.settle_s", "watch.exclude.1",
        "ingest.batch_size", "ingest.decode_threads", "log_level",
    ])
    text = "\n".join(problems)
    assert "At 'inbox': is required" in text
    assert "At 'inbx': unknown key" in text and "inbox" in text.split("At 'inbx'")[1]
    known = ", ".join(sorted(configuration.schema()["properties"]["index"]["properties"]))
    assert f"At 'index.tres': unknown key (known here: {known})" in text
    assert len(problems) == len(set(problems))  # each said once
    assert "At 'state_dir': must be of type string, not 7" in text
    assert "At 'index.search_k': must be of type integer, not 'many'" in text
    assert re.search(r"At 'index.trees': 0 is less than the minimum of 1", text)
    assert re.search(r"At 'index.metric': 'cosine' is not one of \['angular', 'euclidean'\]", text)
    assert re.search(r"At 'log_level': 'loud' is not one of", text)
    assert re.search(r"At 'image.size': 50 is not a multiple of 8", text)


@pytest.mark.parametrize(("settings", "key"), [
    ({"index": {"rebuild_interval_s": 0}}, "index.rebuild_interval_s"),
    ({"index": {"search_k": -2}}, "index.search_k"),
    ({"image": {"size": 4}}, "image.size"),
    ({"search": {"neighbors": 0}}, "search.neighbors"),
    ({"ingest": {"decode_threads": 65}}, "ingest.decode_threads"),
    ({"ingest": {"batch_size": 4097}}, "ingest.batch_size"),
    ({"index": {"trees": True}}, "index.trees"),
    ({"index": 5}, "index"),
    ({"watch": {"exclude": "*.tmp"}}, "watch.exclude"),
    ({"inbox": ""}, "inbox"),
])
def test_one_bad_value(tmp_path: Path, model_file: Path, settings: dict[str, Any],
                       key: str) -> None:
    base: dict[str, Any] = {"inbox": "in", "state_dir": "st", "model": str(model_file)}
    assert set(keys_named(problems_of(write(tmp_path, {**base, **settings})))) == {key}


def test_edge_values_are_accepted(tmp_path: Path, model_file: Path) -> None:
    config = configuration.load(write(tmp_path, {
        "inbox": "in", "state_dir": "st", "model": str(model_file),
        "image": {"size": 8, "color": "grayscale", "max_pixels": 1},
        "index": {"search_k": -1, "trees": 1, "rebuild_interval_s": 0.5},
        "search": {"neighbors": 1000}, "watch": {"settle_s": 0},
    }))
    assert (config.image.size, config.image.color, config.image.max_pixels) == (8, "grayscale", 1)
    assert (config.index.search_k, config.index.rebuild_interval_s) == (-1, 0.5)
    assert (config.neighbors, config.settle_s) == (1000, 0.0)


def test_both_required_keys_missing_from_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("# nothing yet\n")
    assert problems_of(tmp_path / "config.yaml") == ["At 'inbox': is required",
                                                     "At 'state_dir': is required"]


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("inbox: ./in\nstate_dir: [unclosed\nmodel: x\n")
    [problem] = problems_of(tmp_path / "config.yaml")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}: not valid YAML (line ")


def test_a_list_is_not_a_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("- inbox\n- state_dir\n")
    assert problems_of(tmp_path / "config.yaml") == [
        f"{tmp_path / 'config.yaml'}: must be a mapping of keys to values"]


def test_missing_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such config file"]


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_bytes(b"inbox: \xff\xfe\n")
    [problem] = problems_of(tmp_path / "config.yaml")
    assert problem.startswith(f"{tmp_path / 'config.yaml'}: cannot read")


@pytest.mark.parametrize(("folders", "problems"), [
    ({"inbox": "in", "state_dir": "in/.state"},
     ["At 'state_dir': must not be inside or contain 'inbox'"]),
    ({"inbox": "data/in", "state_dir": "data"},
     ["At 'state_dir': must not be inside or contain 'inbox'"]),
    ({"inbox": "in", "state_dir": "./in/"},
     ["At 'state_dir': must not be inside or contain 'inbox'"]),
    ({"inbox": "in", "state_dir": "st", "query_dir": "in/queries"},
     ["At 'query_dir': must not be inside or contain 'inbox'"]),
    ({"inbox": "in", "state_dir": "q/state", "query_dir": "q"},
     ["At 'state_dir': must not be inside or contain 'query_dir'"]),
    ({"inbox": "all/in", "state_dir": "all", "query_dir": "all/q"},
     ["At 'state_dir': must not be inside or contain 'inbox'",
      "At 'state_dir': must not be inside or contain 'query_dir'"]),
])
def test_folders_must_not_overlap(tmp_path: Path, model_file: Path, folders: dict[str, str],
                                  problems: list[str]) -> None:
    assert problems_of(write(tmp_path, {**folders, "model": str(model_file)})) == problems


def test_side_by_side_folders_with_a_common_prefix_are_fine(tmp_path: Path,
                                                           model_file: Path) -> None:
    config = configuration.load(write(tmp_path, {"inbox": "photos", "state_dir": "photos-state",
                                                 "query_dir": "photos-q",
                                                 "model": str(model_file)}))
    assert config.state_dir.name == "photos-state"


def test_model_must_be_a_keras_file(tmp_path: Path) -> None:
    (tmp_path / "encoder.h5").write_bytes(b"old format")
    source = write(tmp_path, {"inbox": "in", "state_dir": "st", "model": "encoder.h5"})
    assert problems_of(source) == ["At 'model': must be a .keras file, not encoder.h5"]


def test_model_must_exist(tmp_path: Path) -> None:
    source = write(tmp_path, {"inbox": "in", "state_dir": "st", "model": "missing.keras"})
    assert problems_of(source) == [f"At 'model': no such file: {tmp_path / 'missing.keras'}"]


def test_model_folder_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "dir.keras").mkdir()
    source = write(tmp_path, {"inbox": "in", "state_dir": "st", "model": "dir.keras"})
    assert keys_named(problems_of(source)) == ["model"]


def test_cross_key_problems_are_reported_together(tmp_path: Path) -> None:
    source = write(tmp_path, {"inbox": "in", "state_dir": "in/st", "model": "missing.keras"})
    assert keys_named(problems_of(source)) == ["state_dir", "model"]


def test_config_works_with_the_trained_encoder(make_config: Any, encoder_path: Path) -> None:
    config = configuration.load(make_config(index={"trees": 3}))
    assert config.model == encoder_path.resolve()
    assert config.query_dir is not None and config.query_dir.name == "queries"
    assert config.index.trees == 3


def schema_defaults() -> dict[str, Any]:
    """Every key of core/schema.yaml with a default, dotted ("index.trees"), and its default."""
    found: dict[str, Any] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for key, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{key}.")
            elif "default" in spec:
                found[prefix + key] = spec["default"]
    walk(configuration.schema()["properties"], "")
    return found


def test_the_shipped_config_states_every_default_as_the_schema_has_it() -> None:
    """core/schema.yaml is the one home of every default: the config.yaml beside the
    README spells each out, and must not drift from it."""
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert shipped["query_dir"] == "./queries"  # a folder of its own for the README's set-up
    for dotted, default in schema_defaults().items():
        if dotted == "query_dir":
            continue
        value: Any = shipped
        for part in dotted.split("."):
            value = value[part]
        assert value == default, dotted


def test_the_readmes_table_gives_every_default_as_the_schema_has_it() -> None:
    rows = re.findall(r"^\| `([\w.]+)` \| ([^|]+) \|",
                      (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    table = {key: shown.strip() for key, shown in rows}
    for dotted, default in schema_defaults().items():
        assert dotted in table, dotted
        shown = table[dotted]
        expected = '`""`' if default == "" else json.dumps(default) if default is None \
            else "[]" if default == [] else str(default)
        assert shown == expected, (dotted, shown, expected)
