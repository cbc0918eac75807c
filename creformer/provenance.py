"""Which code produced a result: recorded in science.json and printed on the generated results page."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_version(repo: Path | None = None) -> str | None:
    """The checkout's commit (short), "+dirty" when tracked files differ from it; None outside git
    (an installed package, or a folder that is not a checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo or REPO, capture_output=True, text=True,
                              check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo or REPO,
                               capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
