"""The one error of the data stage: every problem a stage found, each a full message, raised together."""

from __future__ import annotations


class DataError(Exception):
    """A data problem found before training (exit code 2). `problems` holds one full message each."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
