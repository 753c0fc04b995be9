"""Atomic files, hash-verified array caches and a directory lock.

Everything the study writes goes through here, so a kill or a full disk never leaves a
half-written file where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import CacheError, LockError, SrlibError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, write: callable) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise SrlibError(
                f"disk full while writing {path}; nothing was left half-written. "
                "Free some space (or point SRLIB_CACHE_DIR / --out elsewhere) and rerun."
            ) from exc
        raise


def write_json(path: str | Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Save arrays as .npz with each array's sha256 inside, so a damaged file is detectable."""
    hashes = {name: sha256_array(a) for name, a in arrays.items()}
    header = json.dumps({"meta": meta or {}, "sha256": hashes})
    payload = {**arrays, "__header__": np.frombuffer(header.encode(), dtype=np.uint8)}

    atomic_write_bytes(path, lambda f: np.savez(f, **payload))


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a file written by `save_arrays`; raise CacheError if it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            arrays = {name: z[name] for name in z.files if name != "__header__"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CacheError(f"cache file {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    expected = header.get("sha256", {})
    if set(expected) != set(arrays):
        raise CacheError(f"cache file {path} holds {sorted(arrays)}, its header lists {sorted(expected)}")
    for name, array in arrays.items():
        if sha256_array(array) != expected[name]:
            raise CacheError(f"cache file {path}: array {name!r} does not match its sha256 (altered or damaged)")
    return arrays, header.get("meta", {})


def load_or_build(path: Path, build: callable, log: callable = print) -> tuple[dict[str, np.ndarray], dict]:
    """Return the verified cache at `path`, or build it (and save it) when missing or damaged."""
    if path.exists():
        try:
            return load_arrays(path)
        except CacheError as exc:
            log(f"[srlib] {exc}; rebuilding it")
            path.unlink(missing_ok=True)
    arrays, meta = build()
    save_arrays(path, arrays, meta)
    return arrays, meta


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str = "a sweep") -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (flock: released even if the holder is killed)."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / ".srlib.lock"
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise LockError(
            f"{directory} is in use by {holder}; wait for it to finish or use another output directory (--out)"
        ) from exc
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()})")
        f.flush()
        yield lock_path
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
