"""``--set`` overrides and YAML presets with arbitrary keys and values (Hypothesis): a config, or
a ConfigError whose one line names the key, never another exception (a traceback in the CLI)."""

from __future__ import annotations

import dataclasses
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapler.config import ConfigError, ExperimentConfig, apply_overrides, load_config, parse_overrides

PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of the config, sections included (``stage2``, ``stage2.phi``, ...)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], key + ".")
    return keys


KEYS = dotted_keys(ExperimentConfig)
# Keys as a shell passes them (no control characters or line separators); values anything.
typed_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12)
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k + ".x") | typed_text
# What a shell passes after `=`: anything, and YAML that reads as numbers too big for a float,
# numbers of more than 4,300 digits, lists, mappings, tags, anchors, dates, broken brackets.
raw_values = st.text(max_size=30) | st.sampled_from(
    [
        "1" * 400,
        "1" * 5000,
        "-1" + "0" * 400,
        "1.0e400",
        ".nan",
        "[1, 2]",
        "{a: 1}",
        "[",
        "{",
        "a: b: c",
        "!!python/object:os.system",
        "*alias",
        "&a 1",
        "2020-01-01",
        "null",
        "~",
        "yes",
        "@x",
        "`x",
        "%x",
    ]
)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
    max_leaves=10,
)


def check_error(err: ConfigError) -> None:
    message = str(err)
    assert message.strip() and len(message.strip().splitlines()) == 1, message


@PROPERTY
@given(st.lists(st.tuples(keys, raw_values), max_size=4))
def test_arbitrary_overrides(pairs):
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        config = load_config(None, overrides)
    except ConfigError as err:
        check_error(err)
        return
    assert isinstance(config, ExperimentConfig)


@PROPERTY
@given(st.dictionaries(keys, yaml_values, max_size=4))
def test_arbitrary_values_through_apply_overrides(values):
    try:
        apply_overrides(ExperimentConfig(), values)
    except ConfigError as err:
        check_error(err)


@PROPERTY
@given(
    st.text(max_size=200)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), yaml_values, max_size=4).map(
        yaml.safe_dump
    )
)
def test_arbitrary_preset_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("preset") / "preset.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as err:
        check_error(err)


def test_a_value_that_is_not_yaml_names_its_key():
    for raw in ("[", "{a: 1", "a: b: c", "@x", "!!python/object:os.system x"):
        try:
            parse_overrides([f"stage2.phi={raw}"])
        except ConfigError as err:
            assert str(err).startswith("--set stage2.phi: ") and raw in str(err), err
        else:
            raise AssertionError(f"{raw!r} was read")


def test_numbers_beyond_the_float_range_name_their_key():
    for raw in ("1" * 400, "1" * 5000):
        try:
            load_config(None, [f"stage2.phi={raw}"])
        except ConfigError as err:
            assert "stage2.phi" in str(err), err
        else:
            raise AssertionError(f"{raw[:10]}... was read")


def test_unknown_keys_of_mixed_types_are_named(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("1: a\nb: 2\n")
    try:
        load_config(path)
    except ConfigError as err:
        assert "unknown key(s) ['1', 'b']" in str(err), err
    else:
        raise AssertionError("read")
