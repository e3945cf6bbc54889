"""What a correct validator reply looks like: `exact`, `contains`, `regex`, `jsonSchema`, `judge`.

`judge(reply)` returns a `Judgement`: passed, or the reason and what is wrong. The
`judge` kind asks a second, small model call (through the same proxy, marked as a probe call)
to grade the reply against a rubric; the grader must answer PASS or FAIL, and anything else
counts as a failure (`judge_unclear`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubeagents_probe.errors import CheckFailed
from kubeagents_probe.proxy_client import Reply
from kubeagents_probe.settings import ExpectKind, ProbeSettings, parse_schema

GRADER_SYSTEM = (
    "You grade the reply of another model against a rubric. Answer with exactly one word: "
    "PASS if the reply satisfies the rubric, FAIL if it does not."
)
GRADE = re.compile(r"^\W*(PASS|FAIL)\b", re.IGNORECASE)
EXCERPT_CHARS = 200

Ask = Callable[..., Awaitable[Reply]]


@dataclass(frozen=True)
class Judgement:
    passed: bool
    reason: str = (
        ""  # when failed: unexpected_reply, judge_failed, judge_unclear, judge_unavailable
    )
    detail: str = ""
    grader: Reply | None = None  # the grading call's answer (judge only)


PASSED = Judgement(passed=True)


def mismatch(reason: str, detail: str, grader: Reply | None = None) -> Judgement:
    return Judgement(passed=False, reason=reason, detail=detail, grader=grader)


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


class Expectation:
    """The configured expectation, compiled once at start."""

    def __init__(self, settings: ProbeSettings, ask: Ask) -> None:
        self.kind = settings.expect
        self.value = settings.expect_value
        self.grader_model = settings.grader_model
        self.grader_max_tokens = settings.judge_max_tokens
        self._ask = ask
        self._pattern = re.compile(self.value) if self.kind is ExpectKind.REGEX else None
        self._schema: Any = None
        if self.kind is ExpectKind.JSON_SCHEMA:
            from jsonschema import Draft202012Validator  # a few MB: loaded only when used

            self._schema = Draft202012Validator(parse_schema(self.value))

    async def judge(self, reply: str) -> Judgement:
        if self.kind is ExpectKind.EXACT:
            if reply.strip() == self.value.strip():
                return PASSED
            return mismatch("unexpected_reply", f"expected exactly {self.value!r}")
        if self.kind is ExpectKind.CONTAINS:
            if self.value in reply:
                return PASSED
            return mismatch("unexpected_reply", f"expected it to contain {self.value!r}")
        if self._pattern is not None:
            if self._pattern.search(reply):
                return PASSED
            return mismatch("unexpected_reply", f"expected a match of /{self.value}/")
        if self._schema is not None:
            return self._check_schema(reply)
        return await self._grade(reply)

    def _check_schema(self, reply: str) -> Judgement:
        assert self._schema is not None
        try:
            document = json.loads(reply)
        except ValueError as error:
            return mismatch("unexpected_reply", f"expected JSON, got unparsable text ({error})")
        problem = next(iter(self._schema.iter_errors(document)), None)
        if problem is None:
            return PASSED
        where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
        return mismatch("unexpected_reply", f"JSON schema violated at {where}: {problem.message}")

    async def _grade(self, reply: str) -> Judgement:
        prompt = f"Rubric:\n{self.value}\n\nReply to grade:\n{reply}\n\nAnswer PASS or FAIL."
        try:
            grade = await self._ask(
                model=self.grader_model,
                system=GRADER_SYSTEM,
                prompt=prompt,
                max_tokens=self.grader_max_tokens,
            )
        except CheckFailed as failed:
            return mismatch("judge_unavailable", f"grading call failed: {failed}")
        verdict = GRADE.match(grade.text)
        if verdict is None:
            return mismatch(
                "judge_unclear",
                f"the grader answered {excerpt(grade.text)!r}, not PASS or FAIL",
                grade,
            )
        if verdict.group(1).upper() == "PASS":
            return Judgement(passed=True, grader=grade)
        return mismatch("judge_failed", f"the grader answered {excerpt(grade.text)!r}", grade)
