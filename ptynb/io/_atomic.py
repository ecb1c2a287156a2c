"""Atomic writes: build a temporary sibling, fsync it, then move it onto the target.

Used by :func:`ptynb.io.save`, :func:`ptynb.io.write_cxi` and
:func:`ptynb.ptycho.checkpoint.save_checkpoint`.

The temporary is ``.<name>.tmp-<pid>-<random>`` in the target's directory (same file
system, so the final move is a rename). For a single file, :func:`os.replace` is atomic
(POSIX). A directory (a Zarr store) is swapped with the old one by Linux
``renameat2(RENAME_EXCHANGE)`` where available (atomic); otherwise the old directory is
renamed aside (``.<name>.old-<pid>-<random>``), the new one renamed in, and the old one
deleted (the target is missing for the microseconds between the two renames; if the second
rename fails the old directory is put back).

Any exception (``KeyboardInterrupt`` included) removes the temporary and leaves an existing
target untouched. A process killed outright cannot clean up: its temporaries are removed by
the next save of the same target (a temporary is *stale* when the process id in its name is
no longer running on this machine, or when it has no process id, i.e. comes from an older
ptynb). Two machines saving the same target over a network file system at once is not
supported.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "remove_stale_temporaries", "temp_sibling"]

_ACTIVE: set[str] = set()  # temporaries being written by this process (any thread)
_ACTIVE_LOCK = threading.Lock()


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden sibling path ``.<name>.<tag>-<pid>-<8 hex>`` of ``path`` (not created)."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove(p: Path):
    """Delete a file or a directory tree; missing is fine."""
    if p.is_dir() and not p.is_symlink():
        # zarr writes from a background event loop: after an interrupt a few writes may still
        # land in the directory while it is being deleted, so retry briefly
        for delay in (0.0, 0.05, 0.2, 0.5):
            time.sleep(delay)
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                break
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is someone else's (or cannot tell): keep its files
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries left next to ``path`` by killed saves of the same target.

    Parameters
    ----------
    path : pathlib.Path
        The save target.

    Returns
    -------
    list of pathlib.Path
        The siblings removed: ``.<name>.tmp-*`` / ``.<name>.old-*`` whose process id is not
        running (or that carry none), and ``<name>.tmp-*`` left by the checkpoint writer
        of ptynb <= 0.1. Temporaries of live processes (and of this one) are kept.
    """
    parent = path.parent if str(path.parent) else Path(".")
    name = re.escape(path.name)
    hidden = re.compile(rf"^\.{name}\.(tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}$")
    legacy = re.compile(rf"^{name}\.tmp-[A-Za-z0-9_]{{8}}$")  # tempfile.mkstemp names
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = hidden.match(entry.name)
        if m is not None:
            pid = m.group(2)
            p = Path(entry.path)
            with _ACTIVE_LOCK:
                active = str(p) in _ACTIVE
            if active or (pid is not None and int(pid) != os.getpid() and _pid_running(int(pid))):
                continue
        elif legacy.match(entry.name) and not entry.is_dir(follow_symlinks=False):
            p = Path(entry.path)
        else:
            continue
        _remove(p)
        removed.append(p)
    return removed


def _fsync_path(p: Path):
    """fsync a file, or every file of a directory tree, then the directories themselves."""
    if p.is_dir():
        for root, _dirs, files in os.walk(p):
            for f in files:
                _fsync_file(Path(root) / f)
            _fsync_dir(Path(root))
    elif p.exists():
        _fsync_file(p)


def _fsync_file(p: Path):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(d: Path):
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, target: Path):
    """Move the finished temporary ``tmp`` onto ``target`` (see the module docs on atomicity)."""
    target_exists = target.exists() or target.is_symlink()
    if not tmp.is_dir() and not (target_exists and target.is_dir() and not target.is_symlink()):
        os.replace(tmp, target)  # atomic for files
        _fsync_dir(target.parent)
        return
    if not target_exists:
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    # directory involved: swap atomically where possible, then delete the old one
    if _renameat2_exchange(tmp, target):
        _remove(tmp)  # now holds the old contents
        _fsync_dir(target.parent)
        return
    old = temp_sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)
    _fsync_dir(target.parent)


def atomic_write(
    path: Path,
    writer: Callable[[Path], object],
    *,
    overwrite: bool = True,
    replaceable_dir: Callable[[Path], bool] | None = None,
) -> Path:
    """Run ``writer(tmp)`` on a temporary sibling of ``path``, fsync it, move it onto ``path``.

    Parameters
    ----------
    path : pathlib.Path
        Target file or directory. Its directory must exist.
    writer : callable(pathlib.Path)
        Creates the file or directory at the temporary path it is given.
    overwrite : bool
        If False and ``path`` exists (before or after writing), raise FileExistsError.
    replaceable_dir : callable(pathlib.Path) -> bool, optional
        For an existing directory at ``path``: whether it may be replaced (e.g. "is a Zarr
        store"). Default: an existing directory is never replaced.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        ``overwrite=False`` and ``path`` exists, or ``path`` is a directory that may not be
        replaced.
    FileNotFoundError
        The directory of ``path`` does not exist.
    """
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, "file exists and overwrite=False", str(path))
    if path.is_dir() and not path.is_symlink() and not (replaceable_dir and replaceable_dir(path)):
        why = "is a directory but not a Zarr store" if replaceable_dir else "is a directory"
        raise FileExistsError(errno.EEXIST, f"{why}; refusing to replace it", str(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", str(parent))
    remove_stale_temporaries(path)
    tmp = temp_sibling(path)
    with _ACTIVE_LOCK:
        _ACTIVE.add(str(tmp))
    try:
        writer(tmp)
        _fsync_path(tmp)
        if not overwrite and (path.exists() or path.is_symlink()):
            raise FileExistsError(errno.EEXIST, "file appeared during saving and overwrite=False", str(path))
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(str(tmp))
    return path
