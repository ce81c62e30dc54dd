"""Crash-safe writes: a file or a whole directory appears complete under its final name or not at all.

Data goes to a temporary sibling, is flushed to disk (fsync), then renamed over the final name: a rename is
atomic on POSIX, so a reader never sees half a checkpoint even if the writer is killed mid-write. Every
failure path removes what it wrote (the temporary sibling, the parent directories it made), and an OS error
becomes a :class:`WriteError` that says what happened ("disk full", "read-only file system") and names the path.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

from locmoe.errors import LocMoEError

_WHY = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EEXIST: "already exists",
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports an I/O error's errno


class WriteError(LocMoEError):
    """Writing a file or directory failed (disk full, read-only, permissions); nothing was left behind."""


def fault_due(point: str, step: int | str) -> bool:
    """Test hook: ``LOCMOE_FAULT_INJECT=POINT:ARG`` (comma-separated for several) makes ``point`` fire when
    its argument matches ``step`` (a step number, or an fnmatch pattern of a file name)."""
    for spec in os.environ.get("LOCMOE_FAULT_INJECT", "").split(","):
        name, _, arg = spec.partition(":")
        if name == point and (arg == str(step) or (arg and fnmatch.fnmatch(str(step), arg))):
            return True
    return False


def _injected_write_fault(path: Path) -> None:
    """``LOCMOE_FAULT_INJECT=disk_full:PATTERN`` / ``read_only:PATTERN``: fail writes to matching file names."""
    for point, code in (("disk_full", errno.ENOSPC), ("read_only", errno.EROFS)):
        if fault_due(point, path.name):
            raise OSError(code, os.strerror(code), str(path))


def os_errno(err: BaseException) -> Optional[int]:
    """The errno of an OSError, or of a safetensors I/O error (it only says it in its message)."""
    if isinstance(err, OSError):
        return err.errno
    m = _OS_ERROR.search(str(err))
    return int(m.group(1)) if m else None


def write_error(err: BaseException, path: Path) -> WriteError:
    code = os_errno(err)
    if code is None:
        why = str(err)
    else:
        why = _WHY.get(code, os.strerror(code) if code else str(err))
    return WriteError(f"cannot write {path}: {why} ({err})")


@contextlib.contextmanager
def writing(path: str | os.PathLike, remove_partial: bool = True) -> Iterator[Path]:
    """Around any write of ``path``: an OSError (or a safetensors I/O error) becomes a WriteError naming the
    path and saying why, and the partial file is removed (unless ``remove_partial`` is False: the caller
    wrote elsewhere and ``path`` may hold a previous, complete version)."""
    path = Path(path)
    try:
        _injected_write_fault(path)
        yield path
    except LocMoEError:
        raise
    except Exception as err:  # OSError, or a framework's own error type wrapping one
        if os_errno(err) is None:
            raise
        if remove_partial:
            with contextlib.suppress(OSError):
                if path.is_file():
                    path.unlink()
        raise write_error(err, path) from None


def fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename inside it) across a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_parents(path: Path) -> list[Path]:
    """``mkdir -p`` of ``path``'s parent; returns the directories it created, outermost first (to undo)."""
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise WriteError(f"cannot write {path}: {p} is not a directory")
    for d in reversed(missing):
        with writing(d):
            d.mkdir()
    return list(reversed(missing))


def remove_empty(dirs: list[Path]) -> None:
    """Undo :func:`make_parents` (innermost first), keeping any directory something else wrote into."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory")
    made = make_parents(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path, remove_partial=False):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        remove_empty(made)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A plain write (inside a temporary directory that is renamed later) with :func:`writing`'s errors."""
    with writing(path) as p:
        p.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_directory(
    final: str | os.PathLike, replaceable: Optional[Callable[[Path], bool]] = None, what: str = "directory"
) -> Iterator[Path]:
    """Yield a temporary directory; on success it is renamed to ``final``, on error it is removed.

    ``final`` may already exist only if it is empty or ``replaceable(final)`` says it is a previous output of
    the same writer: anything else is refused (a WriteError naming it), so nothing that this writer did not
    write is ever removed. Files written inside should be fsynced by the writer (``fsync_tree`` does it for
    the whole tree).
    """
    final = Path(final)
    if final.exists() or final.is_symlink():
        check_replaceable(final, replaceable, what)
    made = make_parents(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(tmp):
            tmp.mkdir()
        yield tmp
        with writing(final, remove_partial=False):
            fsync_tree(tmp)
            if final.exists():
                check_replaceable(final, replaceable, what)  # still ours after the write?
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)
        raise


def check_replaceable(final: Path, replaceable: Optional[Callable[[Path], bool]], what: str) -> None:
    """Refuse to replace (or write into) ``final`` unless it is an empty directory or a previous ``what``: the
    one check of every command that writes a directory (export, convert, report), so that none of them
    ever writes beside, or removes, files it did not write."""
    if final.is_symlink() or not final.is_dir():
        raise WriteError(f"{final} exists and is not a directory; refusing to write a {what} there")
    entries = sorted(p.name for p in final.iterdir())
    if not entries or (replaceable is not None and replaceable(final)):
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise WriteError(
        f"{final} is not empty and is not a previous {what} (it holds {shown}); refusing to "
        f"write there: choose a new or empty directory"
    )


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))
