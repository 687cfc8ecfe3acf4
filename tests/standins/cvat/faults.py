"""Failure injection: canned error answers and delays for matching requests."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class FailRule:
    method: str  # upper case, or "*" for any
    pattern: re.Pattern[str]
    status: int
    remaining: int
    body: str | None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and self.pattern.search(path) is not None
        )


@dataclass
class DelayRule:
    method: str
    pattern: re.Pattern[str]
    seconds: float

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.pattern.search(path) is not None


class Faults:
    """The rules in force; the first matching fail rule with answers left wins."""

    def __init__(self) -> None:
        self.fail_rules: list[FailRule] = []
        self.delay_rules: list[DelayRule] = []

    def add_failure(
        self, method: str, path_regex: str, status: int, times: int, body: str | None
    ) -> FailRule:
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error (400-599), got {status}")
        rule = FailRule(method.upper(), re.compile(path_regex), status, times, body)
        self.fail_rules.append(rule)
        return rule

    def add_delay(self, path_regex: str, seconds: float, method: str) -> DelayRule:
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, got {seconds}")
        rule = DelayRule(method.upper(), re.compile(path_regex), seconds)
        self.delay_rules.append(rule)
        return rule

    def take_failure(self, method: str, path: str) -> FailRule | None:
        """The failure to answer with now (spending one of its answers), if any."""
        for rule in self.fail_rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                return rule
        return None

    def delay_for(self, method: str, path: str) -> float:
        return sum(rule.seconds for rule in self.delay_rules if rule.matches(method, path))

    def clear(self) -> None:
        self.fail_rules.clear()
        self.delay_rules.clear()
