"""Filesystem helpers: atomic directory writes and hashing."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import StedgeError


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block succeeds.

    Nothing is left behind on failure: the temporary folder is removed and an
    existing ``path`` stays untouched.
    """
    target = Path(path).resolve()
    if target.exists() and not overwrite:
        raise StedgeError(f"output folder {target} already exists: pass --overwrite or choose another -o")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _default_modes(tmp)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _default_modes(folder: Path) -> None:
    """Give ``folder`` and what is inside it the modes a plain mkdir/open would (umask applied):
    mkdtemp makes 0700 folders, and some writers (onnx external data, safetensors) make 0600 files,
    which would hide a model from the other users of a machine."""
    umask = _current_umask()
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask would set it
    process-wide for a moment, racing other threads that create files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: str | os.PathLike) -> int:
    """Total size in bytes of the files under a directory (or of one file)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
