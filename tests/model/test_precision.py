"""The compute precisions have one source, edensplit.model.precision: the settings, both --dtype flags and model
loading read it."""

from __future__ import annotations

import argparse

import pytest
import torch
from pydantic import ValidationError

from edensplit.cli import build_parser
from edensplit.errors import ConfigError
from edensplit.model import precision
from edensplit.settings import ModelSettings


def test_the_table_names_each_precision_and_its_torch_dtype():
    assert precision.names() == ("float32", "bfloat16", "float16")
    assert [precision.torch_dtype(n) for n in precision.names()] == [torch.float32, torch.bfloat16, torch.float16]
    assert precision.DEFAULT in precision.names()
    with pytest.raises(ConfigError, match="unknown compute dtype 'int8'; use one of float32, bfloat16, float16"):
        precision.torch_dtype("int8")


def test_the_settings_take_a_precision_from_the_table(monkeypatch):
    assert ModelSettings().eden_dtype == precision.DEFAULT
    monkeypatch.setenv("EDEN_DTYPE", "bfloat16")
    assert ModelSettings().eden_dtype == "bfloat16"
    with pytest.raises(ValidationError, match="unknown compute dtype 'float64'; use one of float32, bfloat16, float16"):
        ModelSettings(eden_dtype="float64")


def dtype_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every --dtype flag of the command and its subcommands."""
    found = [a for a in parser._actions if a.dest == "eden_dtype"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += dtype_flags(sub)
    return found


def test_every_dtype_flag_offers_the_tables_precisions():
    flags = dtype_flags(build_parser())
    assert len(flags) >= 4  # interpolate, cloud, edge, serve-ray
    assert all(list(flag.choices) == list(precision.names()) for flag in flags)
