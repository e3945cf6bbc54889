"""No chart default, ci case or example names a model the Anthropic SDK marks deprecated.

The table is the locked `anthropic` SDK's own (the one whose entries make the SDK warn on every
call), so a model that gets an end-of-life date fails this test on the next SDK update instead
of reaching users as a default. The YAML is read, not grepped: every value under a key named
`model`/`models` or ending in `Model`/`Models` (`allowedModels`, `judgeModel`), list items
included, and the keys of `prices` (a price for a model is a use of it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from anthropic.resources.messages.messages import DEPRECATED_MODELS

from harness.binaries import REPO

CHARTS = sorted(path.parent for path in (REPO / "charts").glob("*/Chart.yaml"))
FILES = sorted(
    [chart / "values.yaml" for chart in CHARTS]
    + [path for chart in CHARTS for path in (chart / "ci").glob("*.yaml")]
    + list((REPO / "examples").rglob("*.yaml"))
)
MODEL_KEYS = ("model", "models")
PRICE_KEYS = ("prices",)


def is_model_key(key: object) -> bool:
    """`model`, `models`, `allowedModels`, `judgeModel`, ... (camelCase values)."""
    return isinstance(key, str) and (key in MODEL_KEYS or key.endswith(("Model", "Models")))


def flatten(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """The strings in a model value: itself, or the items of a list (nested lists too)."""
    if isinstance(node, str):
        if node:
            yield path, node
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from flatten(item, f"{path}[{index}]")


def model_ids(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(values path, model id) of every model a values tree names."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            if is_model_key(key):
                yield from flatten(value, child)
            elif key in PRICE_KEYS and isinstance(value, dict):
                yield from ((f"{child}.{model}", str(model)) for model in value)
            else:
                yield from model_ids(value, child)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from model_ids(item, f"{path}[{index}]")


def models_of(file: Path) -> list[tuple[str, str]]:
    return [found for doc in yaml.safe_load_all(file.read_text()) for found in model_ids(doc)]


def test_the_scan_covers_every_chart_ci_case_and_example() -> None:
    names = {str(file.relative_to(REPO)) for file in FILES}
    assert {"charts/agent/values.yaml", "charts/kubeagents/values.yaml"} <= names
    assert {"examples/research-agent.yaml", "examples/summarizer-agent.yaml"} <= names
    assert any(name.startswith("charts/agent/ci/") for name in names)
    # the scan is not vacuous: it finds the agent chart's default and the examples' models
    assert [path for path, _ in models_of(REPO / "charts" / "agent" / "values.yaml")] == ["model"]
    assert "allowedModels[1]" in dict(models_of(REPO / "examples" / "research-agent.yaml"))


def test_the_scan_finds_models_in_every_place_a_values_file_names_them() -> None:
    tree = {
        "model": "m-model",
        "allowedModels": ["m-allowed-0", "m-allowed-1"],
        "prices": {"m-priced": {"input": 1, "output": 2}},
        "probe": {"validator": {"model": "m-validator"},
                  "expectation": {"judgeModel": "m-judge", "value": "claude-not-a-model-key"}},
        "teams": [{"models": ["m-team"]}],
        "otherModel": "",
    }  # fmt: skip
    assert dict(model_ids(tree)) == {
        "model": "m-model",
        "allowedModels[0]": "m-allowed-0",
        "allowedModels[1]": "m-allowed-1",
        "prices.m-priced": "m-priced",
        "probe.validator.model": "m-validator",
        "probe.expectation.judgeModel": "m-judge",
        "teams[0].models[0]": "m-team",
    }


def test_the_sdk_table_is_the_one_this_test_reads() -> None:
    # a deprecated model the SDK lists (end of life 2026-11-30): the test would flag it
    assert "claude-sonnet-4-5" in DEPRECATED_MODELS
    assert [m for _, m in model_ids({"model": "claude-sonnet-4-5"}) if m in DEPRECATED_MODELS]


@pytest.mark.parametrize("file", FILES, ids=lambda file: str(file.relative_to(REPO)))
def test_no_default_ci_case_or_example_names_a_deprecated_model(file: Path) -> None:
    deprecated = [
        f"{path}: {model} (end of life {DEPRECATED_MODELS[model]})"
        for path, model in models_of(file)
        if model in DEPRECATED_MODELS
    ]
    assert not deprecated, f"{file.relative_to(REPO)} names deprecated models: {deprecated}"
