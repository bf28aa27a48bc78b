"""``mainsail serve --reload``: what tells the supervisor that the model's files changed."""

from __future__ import annotations

import os
from pathlib import Path


class FileWatcher:
    """Polls modification times; cheap enough for the development ``--reload`` mode."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self._last = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        state: dict[str, float] = {}
        for root in self.roots:
            if root.is_file():
                state[str(root)] = root.stat().st_mtime
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    try:
                        state[path] = os.stat(path).st_mtime
                    except OSError:
                        continue
        return state

    def changed(self) -> bool:
        current = self._snapshot()
        if current != self._last:
            self._last = current
            return True
        return False
