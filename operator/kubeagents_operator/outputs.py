"""A step's output: its final text, and the JSON in it validated against `outputSchema`.

The JSON is taken from the text the way people write it: the first fenced block (```json …```
or ``` … ```) that parses, else the whole text, else the first `{…}` or `[…]` span that parses.
The validation error names the path and the rule, so a retry prompt can carry it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from kubeagents_operator.errors import OutputInvalid

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class StepOutput:
    text: str
    data: Any = None  # the validated JSON, when the step has an outputSchema


def extract_json(text: str) -> Any:
    """The JSON value in `text`; OutputInvalid when there is none."""
    for block in _FENCE.findall(text):
        try:
            return json.loads(block)
        except ValueError:
            continue
    try:
        return json.loads(text)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for index, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, index)
            except ValueError:
                continue
            return value
    raise OutputInvalid("the output holds no JSON value (fenced or not)")


def validated(text: str, schema: Mapping[str, Any] | None) -> StepOutput:
    """The step's output; with a schema, its JSON validated (OutputInvalid names the error)."""
    if schema is None:
        return StepOutput(text=text)
    data = extract_json(text)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise OutputInvalid(
            f"the output's JSON does not match outputSchema at {where}: {error.message}"
        )
    return StepOutput(text=text, data=data)
