"""Files written whole or not at all, for both halves (checkpoints, results, datasets).

Every write goes to `NAME.tmp` beside its file and is renamed over it (`os.replace`,
atomic on one filesystem): a kill at any moment leaves the old file or the new one, and
at worst a stale `NAME.tmp`. The next write of that file removes the stale temp first,
whatever it is (a half-written file, a link, a folder), so it never fails on one and
never writes through a link a kill left there into the file it points to.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where `replacing(path)` writes before the rename: NAME.tmp beside NAME."""
    return path.with_name(path.name + TEMP_SUFFIX)


def remove(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder tree; nothing if absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


@contextmanager
def replacing(path: Path, temp: Path | None = None) -> Iterator[Path]:
    """Yield an empty temp path (default NAME.tmp) to write; when the block ends without an
    error it is renamed over `path`, else removed. A stale temp is removed first."""
    temp = temp or temp_path(path)
    remove(temp)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        remove(temp)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` whole (see the module docstring)."""
    with replacing(path) as temp:
        if isinstance(data, bytes):
            temp.write_bytes(data)
        else:
            temp.write_text(data, encoding="utf-8")
