"""Which files an ingest job requested over the API may read: regular files under an import root.

The roots are ``<data_dir>/imports`` plus the configured ``job_roots``. A path is taken as the client gave
it: relative paths are relative to the first root; ``..`` components, a leading ``~`` and control
characters are refused before the filesystem is touched; the path is then resolved (symlinks followed)
and must still lie under a resolved root, and be a regular file. Every refusal raises the same
:class:`JobPathRefused` whose message echoes the path as given, so an answer never tells whether a file
outside the roots exists, nor where the roots or the server's working directory are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from embedder.errors import InvalidInput

MAX_PATH_CHARS = 4096


class JobPathRefused(InvalidInput):
    """The path of an ingest job is not a readable regular file under an import root (422)."""


def _refuse(given: str) -> JobPathRefused:
    return JobPathRefused(
        f"path {given[:200]!r} is not a regular file under an import root "
        "(<data_dir>/imports or DOWSE_JOB_ROOTS)",
        field="path",
        limit="import roots",
    )


def resolve_job_path(given: str, roots: list[Path]) -> Path:
    """The resolved file that ``given`` names under one of ``roots``; raises :class:`JobPathRefused`."""
    if not isinstance(given, str) or not given or len(given) > MAX_PATH_CHARS:
        raise _refuse(str(given)[:200])
    if not given.isprintable() or given.startswith("~") or "\\" in given:
        raise _refuse(given)
    if ".." in PurePosixPath(given).parts:
        raise _refuse(given)
    if not roots:
        raise _refuse(given)
    base = roots[0]
    candidate = Path(given) if os.path.isabs(given) else base / given
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError, ValueError):  # symlink loop, odd bytes
        raise _refuse(given) from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise _refuse(given)
    try:
        mode = resolved.stat().st_mode
    except (OSError, ValueError):
        raise _refuse(given) from None
    if not stat.S_ISREG(mode) or not os.access(resolved, os.R_OK):
        raise _refuse(given)
    return resolved


def import_roots(data_dir: Path, extra: list[Path] | None) -> list[Path]:
    """``<data_dir>/imports`` (created) followed by the configured roots, all resolved."""
    imports = Path(data_dir) / "imports"
    imports.mkdir(parents=True, exist_ok=True)
    roots = [imports, *(extra or [])]
    return list(dict.fromkeys(p.expanduser().resolve() for p in roots))
