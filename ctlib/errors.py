"""The error raised for unusable input: one line that names the file and the problem."""

from __future__ import annotations

import os


class CTInputError(ValueError):
    """Unusable input data. ``str(err)`` is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)
