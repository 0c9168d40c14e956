"""training.config: defaults, TOML file, --set overrides, type/range errors naming the key, to_toml."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from training.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    load_config,
    parse_override,
    to_toml,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_equal_the_dataclass_defaults() -> None:
    config = load_config()
    assert config == Config()
    assert config.train == TrainConfig()
    assert config.train.epochs == 100
    assert config.train.objective == "auto"
    assert config.train.batch_size == 512
    assert config.train.device == "auto"
    assert config.model.hidden_dims == (256,)
    assert config.eval.protocol == "llo"
    assert config.tracking.enabled is True
    assert "email" in config.data.personal_columns


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.toml",
        '[train]\nepochs = 3\nlearning_rate = 1\ndevice = "cpu"\n\n[model]\nhidden_dims = [8, 4]\n',
    )
    config = load_config(path)
    assert config.train.epochs == 3
    assert config.train.learning_rate == 1.0
    assert isinstance(config.train.learning_rate, float)
    assert config.train.device == "cpu"
    assert config.model.hidden_dims == (8, 4)
    assert isinstance(config.model.hidden_dims, tuple)
    # Untouched values keep their defaults.
    assert config.train.batch_size == TrainConfig().batch_size
    assert config.data == DataConfig()


def test_set_overrides_win_over_the_file_and_apply_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "[train]\nepochs = 3\nseed = 5\n")
    config = load_config(path, ["train.epochs=7", "eval.protocol=time", "train.epochs=9"])
    assert config.train.epochs == 9
    assert config.train.seed == 5
    assert config.eval.protocol == "time"


def test_parse_override_parses_toml_values_and_bare_words() -> None:
    assert parse_override("train.epochs=5") == {"train": {"epochs": 5}}
    assert parse_override("model.hidden_dims=[1, 2]") == {"model": {"hidden_dims": [1, 2]}}
    assert parse_override("train.progress=false") == {"train": {"progress": False}}
    assert parse_override("eval.protocol=llo") == {"eval": {"protocol": "llo"}}
    assert parse_override(' tracking.experiment = "a=b" ') == {"tracking": {"experiment": "a=b"}}


@pytest.mark.parametrize("text", ["trainepochs=1", "train.epochs", "=1"])
def test_malformed_override_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, [text])


def test_unknown_key_names_section_dot_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.nope: unknown key") as info:
        load_config(None, ["train.nope=1"])
    assert "epochs" in str(info.value)  # lists the known keys
    path = _write(tmp_path / "c.toml", "[model]\nembeding_dim = 8\n")
    with pytest.raises(ConfigError, match=r"model\.embeding_dim: unknown key"):
        load_config(path)


def test_unknown_section_names_the_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope: unknown section") as info:
        load_config(None, ["nope.x=1"])
    assert "train" in str(info.value)
    path = _write(tmp_path / "c.toml", "[trian]\nepochs = 1\n")
    with pytest.raises(ConfigError, match=r"^trian: unknown section"):
        load_config(path)
    path = _write(tmp_path / "d.toml", "train = 5\n")
    with pytest.raises(ConfigError, match=r"^train: must be a table"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "key", "problem"),
    [
        ('train.epochs="5"', "train.epochs", "must be an integer"),
        ("train.epochs=five", "train.epochs", "must be an integer"),
        ("train.epochs=2.5", "train.epochs", "must be an integer"),
        ("train.epochs=true", "train.epochs", "must be an integer"),
        ("train.progress=1", "train.progress", "must be true or false"),
        ('train.progress="true"', "train.progress", "must be true or false"),
        ("model.dropout=true", "model.dropout", "must be a number"),
        ('model.dropout="0.1"', "model.dropout", "must be a number"),
        ("tracking.experiment=3", "tracking.experiment", "must be a string"),
        ("model.hidden_dims=32", "model.hidden_dims", "must be a list"),
        ("model.hidden_dims=[32.5]", "model.hidden_dims[0]", "must be an integer"),
        ("data.personal_columns=[1]", "data.personal_columns[0]", "must be a string"),
    ],
)
def test_wrong_type_names_the_key(override: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert problem in message


def test_wrong_type_in_file_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", '[train]\nbatch_size = "big"\n')
    with pytest.raises(ConfigError, match=r"^train\.batch_size: must be an integer"):
        load_config(path)


def test_int_is_accepted_for_float_fields() -> None:
    config = load_config(None, ["model.dropout=0", "train.learning_rate=1"])
    assert config.model.dropout == 0.0
    assert isinstance(config.model.dropout, float)
    assert isinstance(config.train.learning_rate, float)


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.device=gpu", "train.device"), ("eval.protocol=leave_one_out", "eval.protocol")],
)
def test_literal_values_are_checked(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": must be one of") as info:
        load_config(None, [override])
    assert "'cpu'" in str(info.value) or "'llo'" in str(info.value)


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda"])
def test_every_literal_value_is_accepted(value: str) -> None:
    assert load_config(None, [f"train.device={value}"]).train.device == value


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.batch_size=1", "train.batch_size"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("data.history_length=0", "data.history_length"),
        ("data.min_count=0", "data.min_count"),
        ("data.max_list_length=0", "data.max_list_length"),
        ("data.near_unique_ratio=0", "data.near_unique_ratio"),
        ("data.near_unique_ratio=1.5", "data.near_unique_ratio"),
        ("model.embedding_dim=0", "model.embedding_dim"),
        ("model.output_dim=-1", "model.output_dim"),
        ("model.hidden_dims=[32, 0]", "model.hidden_dims"),
        ("model.dropout=1", "model.dropout"),
        ("model.id_dropout=-0.1", "model.id_dropout"),
        ("model.temperature=0", "model.temperature"),
        ("model.temperature=nan", "model.temperature"),
        ("eval.k=0", "eval.k"),
    ],
)
def test_range_validation_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}: "), message
    assert "must" in message


def test_range_validation_applies_to_file_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "[train]\nepochs = 0\n")
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be >= 1"):
        load_config(path)


@pytest.mark.parametrize(
    "override",
    ["train.weight_decay=-1", "train.learning_rate=inf"],
)
def test_values_training_cannot_use_are_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        load_config(None, [override])


def test_missing_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    path = _write(tmp_path / "bad.toml", "[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]


def test_to_toml_round_trip_of_defaults(tmp_path: Path) -> None:
    config = load_config()
    path = _write(tmp_path / "c.toml", to_toml(config))
    assert load_config(path) == config


def test_to_toml_round_trip_of_non_defaults(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "train.epochs=3",
            "train.learning_rate=1e-7",
            "train.weight_decay=0",
            "train.logq_correction=false",
            "train.device=cpu",
            "model.hidden_dims=[]",
            "model.temperature=0.125",
            "data.personal_columns=['email', 'x y']",
            "eval.protocol=none",
            'tracking.tracking_uri="sqlite:///C:\\\\tmp\\\\m \\"q\\".db"',
            "tracking.experiment=\"é ü – 'single'\"",
        ],
    )
    assert config.tracking.tracking_uri == 'sqlite:///C:\\tmp\\m "q".db'
    assert config.model.hidden_dims == ()
    path = _write(tmp_path / "c.toml", to_toml(config))
    assert load_config(path) == config
    assert config.to_dict()["model"]["hidden_dims"] == []  # tuples are lists in the plain form


def test_to_toml_round_trip_of_strings_with_control_characters(tmp_path: Path) -> None:
    config = load_config(None, ['tracking.experiment="line1\\nline2\\ttab"'])
    path = _write(tmp_path / "c.toml", to_toml(config))
    assert load_config(path) == config


def test_model_config_fields_are_all_rendered() -> None:
    text = to_toml(load_config())
    for section in ("[data]", "[model]", "[train]", "[eval]", "[tracking]"):
        assert section in text
    for field in dataclasses.fields(ModelConfig):
        assert f"\n{field.name} = " in text
