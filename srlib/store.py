"""Atomic files, hash-sealed array caches and checkpoints, and a directory lock.

Everything the study writes goes through here, so a kill or a full disk never leaves a
half-written file where a finished one is expected, and a damaged file is never used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import CacheError, DiskFullError, LockError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_ZIP_END = b"PK\x05\x06"  # signature of a zip's end-of-central-directory record (22 bytes + comment)
_ZIP_END_SIZE = 22
_SEAL = b"srlib-sha256:"
_SEAL_SIZE = len(_SEAL) + 64
_TORCH_SEAL = b"srlib-torch-sha256:"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return _hash_prefix(f, os.fstat(f.fileno()).st_size).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync, then rename it over `path`.

    Readers see the old file or the new one, never a mix. On an error the temporary file is
    removed; after a kill it stays behind and the next write to `path` removes it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w+b") as f:  # readable too: save_arrays hashes what it wrote
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise DiskFullError(
                f"disk full while writing {path}; nothing was left half-written (an existing file there is "
                "unchanged). Free some space (or point SRLIB_CACHE_DIR / --cache-dir / --out elsewhere) and rerun"
            ) from exc
        raise


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of `path` left by killed writers on this machine (live ones are kept)."""
    prefix = f".{path.name}.{_HOST}-"
    for name in os.listdir(path.parent):
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError means it exists under another user: alive
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on directories, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str | Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def read_json_or_none(path: str | Path) -> dict | None:
    """`read_json`, or None for a file that is missing, being written or damaged (none of them is a result)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


# --- array caches: .npz files sealed with the sha256 of all their bytes ---------------------------------

def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Save arrays as .npz with each array's sha256 inside and the whole file's sha256 in its zip comment.

    The file stays a plain .npz (np.load reads it); `load_arrays` refuses it if any byte changed."""
    hashes = {name: sha256_array(a) for name, a in arrays.items()}
    header = json.dumps({"meta": meta or {}, "sha256": hashes})
    payload = {**arrays, "__header__": np.frombuffer(header.encode(), dtype=np.uint8)}

    def write(f: BinaryIO) -> None:
        np.savez(f, **payload)
        _seal_zip(f)

    atomic_write_bytes(path, write)


def _seal_zip(f: BinaryIO) -> None:
    """Hash the zip as written (empty comment), then store that hash as its comment."""
    end = f.seek(0, os.SEEK_END)
    f.seek(end - _ZIP_END_SIZE)
    record = f.read(_ZIP_END_SIZE)
    if record[:4] != _ZIP_END or record[-2:] != b"\0\0":
        raise RuntimeError("np.savez wrote an unexpected zip layout; cannot seal it")
    f.seek(0)
    digest = _hash_prefix(f, end).hexdigest()
    f.seek(end - 2)
    f.write(struct.pack("<H", _SEAL_SIZE) + _SEAL + digest.encode())


def _hash_prefix(f: BinaryIO, size: int, chunk: int = 1 << 20) -> hashlib._Hash:
    """sha256 of the next `size` bytes of `f`."""
    digest = hashlib.sha256()
    while size > 0:
        block = f.read(min(chunk, size))
        if not block:
            raise EOFError("file ended early")
        digest.update(block)
        size -= len(block)
    return digest


def _check_seal(path: Path) -> bool:
    """True if `path` carries a seal that matches; False for an unsealed (older srlib) file; else CacheError."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size >= _ZIP_END_SIZE:
            f.seek(size - _ZIP_END_SIZE)
            record = f.read(_ZIP_END_SIZE)
            if record[:4] == _ZIP_END and record[-2:] == b"\0\0":
                return False
        body = size - _SEAL_SIZE - 2  # everything before the comment length
        if body < _ZIP_END_SIZE - 2:
            raise CacheError(f"cache file {path} is truncated ({size} bytes)")
        f.seek(body - (_ZIP_END_SIZE - 2))
        record, seal = f.read(_ZIP_END_SIZE), f.read()
        if record[:4] != _ZIP_END or record[-2:] != struct.pack("<H", _SEAL_SIZE) or not seal.startswith(_SEAL):
            raise CacheError(f"cache file {path} has no valid sha256 seal (truncated or altered)")
        f.seek(0)
        digest = _hash_prefix(f, body)
        digest.update(b"\0\0")  # the comment length as it was when the hash was taken
    if digest.hexdigest().encode() != seal[len(_SEAL):]:
        raise CacheError(f"cache file {path} does not match its sha256 (altered or damaged)")
    return True


def load_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a file written by `save_arrays`; raise CacheError if it is damaged in any way."""
    path = Path(path)
    try:
        sealed = _check_seal(path)
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            arrays = {name: z[name] for name in z.files if name != "__header__"}
        expected = header["sha256"]
        if set(expected) != set(arrays):
            raise CacheError(f"cache file {path} holds {sorted(arrays)}, its header lists {sorted(expected)}")
        if not sealed:  # files from before the seal: check what they carry, each array's hash
            for name, array in arrays.items():
                if sha256_array(array) != expected[name]:
                    raise CacheError(f"cache file {path}: array {name!r} does not match its sha256 (altered or "
                                     "damaged)")
        return arrays, header.get("meta", {})
    except CacheError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged zip makes numpy raise, the file is unusable
        raise CacheError(f"cache file {path} is unreadable ({type(exc).__name__}: {exc})") from exc


def load_or_build(path: Path, build: Callable[[], tuple[dict, dict]],
                  log: Callable[[str], Any] = print) -> tuple[dict[str, np.ndarray], dict]:
    """Return the verified cache at `path`, or build it (and save it) when missing or damaged.

    Builders take `path`'s `file_lock`, so parallel workers (on one machine or many sharing the
    folder) build each cache once; the others wait and then load it."""
    with contextlib.suppress(OSError, CacheError):
        return load_arrays(path)  # the common case: built earlier, no lock needed
    with file_lock(path, f"building {path.name}", log=log):
        if path.exists():  # built by another worker while this one waited, or damaged
            try:
                return load_arrays(path)
            except CacheError as exc:
                log(f"[srlib] {exc}; not using it, rebuilding it")
                path.unlink(missing_ok=True)
        arrays, meta = build()
        save_arrays(path, arrays, meta)
        return arrays, meta


# --- a lock file that works across machines sharing a (network) filesystem -----------------------------

LOCK_HEARTBEAT_S = 20.0  # the holder touches its lock file this often ...
LOCK_STALE_S = 300.0  # ... so one untouched this long belongs to a dead holder on another machine


def lock_holder(lock: Path) -> dict | None:
    """Who holds `lock` ({host, pid, since, what, age_s}), or None when it is free."""
    try:
        text = lock.read_text()
        age = max(0.0, time.time() - lock.stat().st_mtime)
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text or "{}")  # empty: its holder is writing it (or died doing so: the age tells)
    except ValueError:
        info = {}
    return {**info, "age_s": age}


def lock_is_stale(info: dict, stale_after: float = LOCK_STALE_S) -> bool:
    """A holder on this machine whose process is gone, or one anywhere whose heartbeat stopped."""
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not _process_alive(info["pid"])
    return info.get("age_s", 0.0) > stale_after


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "", log: Callable[[str], Any] = print, poll: float = 0.5,
              stale_after: float = LOCK_STALE_S, timeout: float | None = None) -> Iterator[Path]:
    """Hold `<path>.lock`, created with O_CREAT|O_EXCL (atomic on local disks and NFSv3+).

    The file records the holder's host and pid, and a thread refreshes its mtime while it is held; a waiter
    removes a stale lock (`lock_is_stale`). Unlike flock this works on network filesystems, and a killed
    holder blocks the others for at most `stale_after`."""
    import threading

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
    started, told = time.monotonic(), False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(lock)
            if holder is not None and lock_is_stale(holder, stale_after):
                log(f"[srlib] removing the stale lock {lock} (holder {holder.get('host')} pid {holder.get('pid')} "
                    "is gone)")
                _remove_if_same(lock, holder)
                continue
            if timeout is not None and time.monotonic() - started > timeout:
                raise LockError(f"{lock} is held by {_describe(holder)} for more than {timeout:.0f} s; if that "
                                f"process is gone, delete {lock} and rerun") from None
            if not told and holder is not None:
                log(f"[srlib] waiting for {_describe(holder)} ({lock.name})")
                told = True
            time.sleep(poll)
            continue
        try:
            os.write(fd, json.dumps(me).encode())
        finally:
            os.close(fd)
        break
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(lock)

    beat = threading.Thread(target=heartbeat, daemon=True, name=f"lock {lock.name}")
    beat.start()
    try:
        yield lock
    finally:
        done.set()
        beat.join()
        _remove_if_same(lock, me)


def _describe(holder: dict | None) -> str:
    if not holder or "host" not in holder:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"{holder.get('what') or 'another process'} (host {holder['host']}, pid {holder['pid']}, since {since})"


def _remove_if_same(lock: Path, holder: dict) -> None:
    """Unlink `lock` only if it still names `holder` (another waiter may have replaced it meanwhile)."""
    current = lock_holder(lock)
    if current is not None and all(current.get(k) == holder.get(k) for k in ("host", "pid", "since")):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


# --- checkpoints: torch.save bytes behind a sha256 line ---------------------------------------------------

def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save `obj` atomically, prefixed by the sha256 of its bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    line = _TORCH_SEAL + sha256_bytes(payload).encode() + b"\n"
    atomic_write_bytes(path, lambda f: (f.write(line), f.write(payload)))


def load_torch(path: str | Path) -> Any:
    """Load a file written by `save_torch` (tensors, containers and numbers only); CacheError if damaged."""
    import torch

    data = Path(path).read_bytes()
    head = len(_TORCH_SEAL) + 65
    if len(data) < head or not data.startswith(_TORCH_SEAL) or data[head - 1:head] != b"\n":
        raise CacheError(f"{path} has no valid sha256 line (truncated, altered or not an srlib checkpoint)")
    payload = memoryview(data)[head:]
    if sha256_bytes(payload).encode() != data[len(_TORCH_SEAL):head - 1]:
        raise CacheError(f"{path} does not match its sha256 (altered or damaged)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - intact bytes that torch cannot read are as unusable
        raise CacheError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from exc


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
