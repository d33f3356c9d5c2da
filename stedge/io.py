"""Filesystem helpers: the one place that writes outputs (atomic folders and files, a lock per output,
what ``--overwrite`` may replace, stale temporaries) and hashes files.

Every writer of an output folder goes through :func:`atomic_dir`:

* the result is built in a temporary sibling ``.<name>.stedge-tmp.<pid>.<random>`` and renamed into
  place only when the block succeeds, so a crash, kill or full disk never leaves half an output;
* writers of one output take a lock (``fcntl.flock`` on a sibling ``.<name>.lock``): a second
  writer waits for the first (``STEDGE_LOCK_TIMEOUT`` seconds, default: as long as it takes) and then
  sees what the first wrote;
* ``overwrite=True`` replaces only an output stedge recognises (an empty folder, an artifact with
  ``stedge.json`` or a model folder made of model files) and never a file, the working directory or
  one of its ancestors, a protected path (the source model) or a folder with other content;
* temporaries left by a killed writer (their pid is dead) are removed on the next write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from .errors import StedgeError

TMP_TAG = "stedge-tmp"
OLD_TAG = "stedge-old"
# Top-level files that make a folder one stedge (or sentence-transformers / transformers) wrote.
MODEL_MARKERS = ("stedge.json", "modules.json", "config.json", "adapter_config.json")
# Suffixes of the files a model folder or an artifact holds; anything else is the user's and is never deleted.
MODEL_SUFFIXES = frozenset(
    {
        ".json",
        ".safetensors",
        ".bin",
        ".txt",
        ".model",
        ".md",
        ".onnx",
        ".onnx_data",
        ".data",
        ".xml",
        ".tiktoken",
        ".npy",
    }
)
MODEL_NAMES = frozenset({"LICENSE", "NOTICE", ".gitattributes"})
OWN_HIDDEN = (".stedge", ".bench-")  # hidden files stedge itself writes into its outputs
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


class OutputError(StedgeError):
    """An output path cannot be written or replaced (exists, unwritable, full, not stedge's to replace)."""


# ------------------------------------------------------------------ checks
def _abs(path: str | os.PathLike) -> Path:
    """Absolute path with the parent resolved but the last component kept (a symlink is not followed)."""
    p = Path(os.path.abspath(os.fspath(path)))
    if p.parent == p:  # the root folder
        return p
    return p.parent.resolve() / p.name


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def foreign_entries(folder: Path, limit: int = 3) -> list[str]:
    """Entries of ``folder`` (recursively) that are not model files: symlinks, other suffixes, hidden
    files that are not stedge's own. At most ``limit`` are returned."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in list(dirnames):
            p = base / name
            if p.is_symlink() or (name.startswith(".") and name != ".stedge-work" and TMP_TAG not in name):
                out.append(str(p.relative_to(folder)) + "/")
                dirnames.remove(name)
        for name in filenames:
            p = base / name
            suffix = "".join(Path(name).suffixes[-1:])
            if name in MODEL_NAMES and not p.is_symlink():
                continue
            if name.startswith(OWN_HIDDEN) and not p.is_symlink():
                continue
            if p.is_symlink() or suffix not in MODEL_SUFFIXES or name.startswith("."):
                out.append(str(p.relative_to(folder)))
        if len(out) >= limit:
            break
    return out[:limit]


def check_replaceable(target: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()) -> None:
    """Raise OutputError unless ``--overwrite`` may replace ``target`` (see the module docstring)."""
    t = _abs(target)
    hint = "choose another -o"
    if t.is_symlink():
        raise OutputError(f"--overwrite: {t} is a symbolic link; stedge replaces only folders it wrote: {hint}")
    if not t.exists():
        return
    if not t.is_dir():
        raise OutputError(f"--overwrite: {t} is a file, not a folder stedge wrote; it is left alone: {hint}")
    cwd = Path.cwd().resolve()
    if _within(cwd, t):
        what = "the working directory" if t == cwd else "an ancestor of the working directory"
        raise OutputError(f"--overwrite: {t} is {what}; stedge never replaces it: {hint}")
    for p in protect:
        src = Path(p).resolve()
        if _within(src, t) or _within(t, src):
            raise OutputError(f"--overwrite: {t} holds or is inside the source model {src}; it is left alone: {hint}")
    if not any(t.iterdir()):
        return
    if not any((t / m).is_file() for m in MODEL_MARKERS):
        raise OutputError(
            f"--overwrite: {t} is not a model folder or artifact (no {', '.join(MODEL_MARKERS)}); "
            f"stedge replaces only what it wrote: {hint}, or empty the folder yourself"
        )
    foreign = foreign_entries(t)
    if foreign:
        raise OutputError(
            f"--overwrite: {t} holds files that are not model files ({', '.join(foreign)}); stedge replaces only "
            f"what it wrote: {hint}, or move them away yourself"
        )


def check_writable(target: str | os.PathLike, what: str = "-o") -> None:
    """Raise OutputError when ``target`` could not be created: its nearest existing ancestor is not a
    writable folder. Probes with a real file, so read-only mounts are caught even for root."""
    t = _abs(target)
    anc = t.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{what} {t}: {anc} is a file, not a folder")
    try:
        fd = os.open(anc / f".{t.name}.{TMP_TAG}-probe.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise OutputError(f"{what} {t}: cannot write in {anc} ({e.strerror}); choose a writable location") from None
    os.close(fd)
    os.unlink(anc / f".{t.name}.{TMP_TAG}-probe.{os.getpid()}")


def check_output(
    target: str | os.PathLike,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    exists_hint: str = "pass --overwrite or choose another -o",
) -> Path:
    """The checks a writer runs BEFORE its work: ``target`` is new (or replaceable with ``overwrite``) and
    writable. Returns the absolute target."""
    t = _abs(target)
    if t.exists() or t.is_symlink():
        if not overwrite:
            raise OutputError(f"output {t} already exists: {exists_hint}")
        check_replaceable(t, protect)
    check_writable(t)
    return t


def write_error(e: OSError, target: Path) -> OutputError | None:
    """An OutputError for an OSError met while writing ``target`` (full disk, read-only, quota), else None."""
    if e.errno in _WRITE_ERRNOS or (
        e.errno in (errno.EACCES, errno.EPERM) and e.filename and str(e.filename).startswith(str(target.parent))
    ):
        where = f" ({e.filename})" if e.filename else ""
        return OutputError(
            f"cannot write {target}: {e.strerror or e}{where}; nothing was written, "
            "existing files are untouched: free space or choose another -o"
        )
    return None


# ------------------------------------------------------------------ lock
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _lock_timeout() -> float | None:
    raw = os.environ.get("STEDGE_LOCK_TIMEOUT", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise OutputError(f"STEDGE_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from None


def _acquire(lock: Path, target: Path) -> int:
    timeout = _lock_timeout()
    start = time.monotonic()
    told = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            if timeout is not None and time.monotonic() - start >= timeout:
                raise OutputError(
                    f"{target} is being written by another stedge process{owner}; waited {timeout:g} s "
                    "(STEDGE_LOCK_TIMEOUT): try again when it is done, or choose another -o"
                ) from None
            if not told:
                print(f"waiting: another stedge process{owner} is writing {target}", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.2)
            continue
        try:  # the file may have been unlinked by the holder we waited for: lock the live one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {raw})" if raw.isdigit() else ""


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of one output (re-entrant within a process); yields the absolute target.

    Creates the parent folders. The lock file ``.<name>.lock`` is removed on release."""
    t = _abs(target)
    try:
        t.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"-o {t}: cannot create {t.parent} ({e.strerror}); choose a writable location") from None
    lock = _lock_path(t)
    with _held_guard:
        entry = _held.get(lock)
        if entry is not None and entry[1] == threading.get_ident():
            entry[2] += 1
            reentrant = True
        else:
            reentrant = False
    if not reentrant:
        try:
            fd = _acquire(lock, t)
        except PermissionError as e:
            raise OutputError(
                f"-o {t}: cannot write in {t.parent} ({e.strerror}); choose a writable location"
            ) from None
        with _held_guard:
            _held[lock] = [fd, threading.get_ident(), 1]
    try:
        yield t
    finally:
        with _held_guard:
            entry = _held[lock]
            entry[2] -= 1
            last = entry[2] == 0
            if last:
                del _held[lock]
        if last:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(entry[0])


# ------------------------------------------------------------------ temporaries
_TMP_RE = re.compile(rf"^\.(?P<name>.+)\.(?:{TMP_TAG}|{OLD_TAG})\.(?P<pid>\d+)(?:\.[0-9a-f]+)?$")
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp-[A-Za-z0-9_]{8}|old-\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _nested_pid(entry: str, name: str) -> int | None:
    """The writer pid of ``..<name>.stedge-tmp.<pid>.<hex>.stedge-tmp...`` (a temporary inside a temporary)."""
    prefix = f"..{name}.{TMP_TAG}."
    if not entry.startswith(prefix):
        return None
    pid = entry[len(prefix) :].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writers of ``target`` left beside it (call under its lock).

    A previous version kept by a writer killed in the middle of its final swap is put back when
    ``target`` is missing. Returns what was removed."""
    t = _abs(target)
    removed: list[Path] = []
    try:
        entries = list(t.parent.iterdir())
    except OSError:
        return removed
    for p in sorted(entries, key=lambda q: OLD_TAG not in q.name):  # old versions first: they may be restored
        m = _TMP_RE.match(p.name)
        nested = _nested_pid(p.name, t.name)
        if nested is not None and m and m.group("name") != t.name:  # a temporary of our temporary
            if not _alive(nested) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            continue
        legacy = _LEGACY_RE.match(p.name)
        if not p.is_dir() or p.is_symlink():
            continue
        if m and m.group("name") == t.name and not _alive(int(m.group("pid"))):
            pass
        elif not (legacy and legacy.group("name") == t.name):
            continue
        if OLD_TAG in p.name or ".old-" in p.name:
            if not t.exists():
                p.rename(t)
                continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# ------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, overwrite: bool = False, protect: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block succeeds.

    Holds the output's lock for the whole block and removes stale temporaries of this output first.
    An existing ``path`` is an error unless ``overwrite``, and then it must pass
    :func:`check_replaceable` (``protect``: paths that must never be replaced, such as the source
    model). Nothing is left behind on failure: the temporary folder is removed and an existing
    ``path`` stays untouched. A full disk or read-only target raises OutputError.
    """
    t = _abs(path)
    if _is_own_temporary(t):  # a writer nested in another atomic_dir: the outer one holds the lock
        if t.is_dir() and not t.is_symlink() and not any(t.iterdir()):
            yield t  # the outer temporary itself: the outer block renames it or removes it
            return
        yield from _atomic_dir_locked(t, overwrite, protect)
        return
    with output_lock(t):
        clean_stale(t)
        yield from _atomic_dir_locked(t, overwrite, protect)


def _is_own_temporary(t: Path) -> bool:
    return any(f".{TMP_TAG}." in part for part in t.parts)


def _atomic_dir_locked(target: Path, overwrite: bool, protect) -> Iterator[Path]:
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputError(f"output {target} already exists: pass --overwrite or choose another -o")
        check_replaceable(target, protect)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{TMP_TAG}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise OutputError(
            f"-o {target}: cannot write in {target.parent} ({e.strerror}); choose a writable location"
        ) from None
    try:
        yield tmp
        _default_modes(tmp)
    except BaseException as e:
        vanished = not tmp.is_dir()
        shutil.rmtree(tmp, ignore_errors=True)
        err = _failed_write(e, target, tmp, vanished)
        if err is not None:
            raise err from e
        raise
    _swap(tmp, target)


def _failed_write(e: BaseException, target: Path, tmp: Path, vanished: bool) -> OutputError | None:
    """An OutputError when a writer failed because of the output (full disk, read-only, the folder
    vanished) rather than a bug; libraries (safetensors, onnx) wrap ENOSPC in their own exceptions."""
    if isinstance(e, OSError):
        err = write_error(e, target)
        if err is not None:
            return err
    if not isinstance(e, Exception) or (isinstance(e, StedgeError) and not vanished):
        return None
    if vanished:
        return OutputError(
            f"cannot write {target}: the folder being written ({tmp.parent}) vanished meanwhile; nothing was written"
        )
    text = str(e)
    markers = ("No space left", "os error 28", "Disk quota exceeded", "ENOSPC")
    if any(m in text for m in markers) or _full(target.parent):
        return OutputError(
            f"cannot write {target}: no space left on the device ({type(e).__name__}); nothing was "
            "written, existing files are untouched: free space or choose another -o"
        )
    return None


def _full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def _swap(tmp: Path, target: Path) -> None:
    old = None
    try:
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.{OLD_TAG}.{os.getpid()}"
            target.rename(old)
        tmp.rename(target)
    except BaseException as e:
        if old is not None and not target.exists():
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(
                f"cannot move the finished output into {target} ({e.strerror}); nothing was replaced"
            ) from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling file path that replaces ``path`` (a file, never a folder) only if the
    block succeeds. Parent folders must exist; the output's lock is held for the block."""
    t = _abs(path)
    if t.is_dir():
        raise OutputError(f"-o {t} is a folder; give a file name")
    if not t.parent.is_dir():
        raise OutputError(f"-o {t}: folder {t.parent} does not exist")
    with output_lock(t):
        tmp = t.parent / f".{t.name}.{TMP_TAG}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            yield tmp
            if tmp.exists():
                tmp.chmod(0o666 & ~_current_umask())
                os.replace(tmp, t)
        except BaseException as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(e, OSError):
                err = write_error(e, t)
                if err is None and not t.parent.is_dir():
                    err = OutputError(
                        f"cannot write {t}: its folder {t.parent} vanished meanwhile; nothing was written"
                    )
                if err is not None:
                    raise err from e
            raise


def _default_modes(folder: Path) -> None:
    """Give ``folder`` and what is inside it the modes a plain mkdir/open would (umask applied):
    some writers (onnx external data, safetensors) make 0600 files, which would hide a model from the
    other users of a machine."""
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


JSON_LIMIT = 64 << 20  # a config or tokenizer JSON is far smaller; more means a wrong or hostile file


def regular_file(path: str | os.PathLike, limit: int | None = None) -> Path:
    """``path`` if it is a regular file (a symlink to one is fine) of at most ``limit`` bytes, else
    InvalidModelError: a folder, a device such as /dev/zero or a FIFO would make a reader hang."""
    import stat

    from .errors import InvalidModelError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InvalidModelError(f"{p} is missing") from None
    except OSError as e:
        raise InvalidModelError(f"{p} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError(f"{p} is not a regular file (a folder, device or link to one); restore the file")
    if limit is not None and st.st_size > limit:
        raise InvalidModelError(
            f"{p} is {st.st_size} bytes, more than the {limit} such a file can be; restore the file"
        )
    return p


def read_json(path: str | os.PathLike, limit: int = JSON_LIMIT):
    """Parse a JSON file of a model folder; InvalidModelError (one line naming the file) when it is
    missing, not a regular file, too large, not UTF-8 or not valid JSON."""
    import json

    from .errors import InvalidModelError

    p = regular_file(path, limit)
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidModelError(f"{p} is not UTF-8 text (byte {e.start}): not a JSON file; restore it") from None
    except ValueError as e:
        raise InvalidModelError(f"{p} is not valid JSON ({e}); restore the file") from None


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
