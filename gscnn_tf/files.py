"""Every file the project reads or writes for its users (configs, datasets, run directories,
checkpoints, metrics, pictures, presets, exports) goes through these helpers, which use
TensorFlow's file system layer (`tf.io.gfile`): local paths, `gs://` (built into TensorFlow),
`ram://` (in memory, for tests) and the schemes of TensorFlow's file system plugins
(`s3://`, `hdfs://`, ...) all work.

Atomic writes (`atomic_write_bytes`, `atomic_write_text`) write a temporary file next to the
target and rename it over the target. On a local file system the rename is atomic: a reader
sees the old or the new file, never a part. An object store (`gs://`, `s3://`) has no rename;
TensorFlow copies the object and deletes the temporary one. Each object still appears whole
(an upload is visible only when complete), but a crash between the copy and the delete can
leave the `*.tmp` object behind, and a folder of several files appears file by file
(docs/cluster.md#where-the-run-directory-and-the-data-live).

Paths are strings joined with `/` (`join`), which is what every scheme expects. Errors are
the built-in OS errors, as with `open`: FileNotFoundError, PermissionError, FileExistsError,
else OSError, each naming the path.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile

import numpy as np
import tensorflow as tf

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@contextlib.contextmanager
def _os_errors(path: str):
    """TensorFlow's file system errors as the built-in OS errors naming `path`."""
    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(2, f"No such file or directory ({_reason(e)})", path) from e
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(13, f"Permission denied ({_reason(e)})", path) from e
    except tf.errors.AlreadyExistsError as e:
        raise FileExistsError(17, f"File exists ({_reason(e)})", path) from e
    except tf.errors.OpError as e:
        raise OSError(5, _reason(e), path) from e


def _reason(error) -> str:
    return " ".join(str(getattr(error, "message", None) or error).split())


def is_local(path: str | os.PathLike) -> bool:
    """True for a path of the local file system (no `scheme://`, or `file://`)."""
    path = os.fspath(path)
    return not _SCHEME.match(path) or path.startswith("file://")


def join(path: str | os.PathLike, *parts: str) -> str:
    """`path/part/...`: os.path.join for local paths, `/` for `scheme://` paths."""
    path = os.fspath(path)
    return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def dirname(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.dirname(path) if is_local(path) else posixpath.dirname(path)


def exists(path: str | os.PathLike) -> bool:
    return tf.io.gfile.exists(os.fspath(path))


def isdir(path: str | os.PathLike) -> bool:
    return tf.io.gfile.isdir(os.fspath(path))


def isfile(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
    """Creates `path` and its parents (no error when it exists; '' is the working folder)."""
    path = os.fspath(path)
    if path:
        with _os_errors(path):
            tf.io.gfile.makedirs(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """The sorted names in folder `path` (object stores' trailing `/` of folders removed)."""
    path = os.fspath(path)
    with _os_errors(path):
        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def glob(pattern: str | os.PathLike) -> list[str]:
    """The sorted paths matching `pattern` (`*`, `?`, `[...]` within one path component)."""
    pattern = os.fspath(pattern)
    with _os_errors(pattern):
        return sorted(tf.io.gfile.glob(pattern))


def walk(top: str | os.PathLike):
    """(folder, sub-folder names, file names) for `top` and every folder below it, top
    down, as os.walk."""
    top = os.fspath(top)
    with _os_errors(top):
        for folder, subfolders, names in tf.io.gfile.walk(top):
            yield folder, [d.rstrip("/") for d in subfolders], names


def open(path: str | os.PathLike, mode: str = "r"):  # noqa: A001  (the module's open)
    """`tf.io.gfile.GFile(path, mode)`: text in "r"/"w"/"a", bytes in "rb"/"wb"/"ab"."""
    return tf.io.gfile.GFile(os.fspath(path), mode)


def read_bytes(path: str | os.PathLike) -> bytes:
    path = os.fspath(path)
    with _os_errors(path), open(path, "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def _new_file_mode() -> int:
    """The mode `open()` gives a new file under the process's umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename (see the module
    docstring for what object stores make of it); creates the parent folder. A local file's
    temporary is uniquely named in the target's folder, removed if the write fails, and given
    the mode a plain `open` would (mkstemp's owner-only 0600 would hide an export from a
    serving container running as another user); elsewhere it is `<path>.tmp`."""
    path = os.fspath(path)
    makedirs(dirname(path))
    if not is_local(path):
        tmp = f"{path}.tmp"
        with _os_errors(path):
            with open(tmp, "wb") as f:
                f.write(data)
            tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    local = os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.tmp-",
                                   dir=os.path.dirname(local))
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` directly (a file nobody reads while it is written)."""
    path = os.fspath(path)
    makedirs(dirname(path))
    with _os_errors(path), open(path, "wb") as f:
        f.write(data)


def rename(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> None:
    with _os_errors(os.fspath(src)):
        tf.io.gfile.rename(os.fspath(src), os.fspath(dst), overwrite=overwrite)


def remove(path: str | os.PathLike) -> None:
    with _os_errors(os.fspath(path)):
        tf.io.gfile.remove(os.fspath(path))


def rmtree(path: str | os.PathLike) -> None:
    """Deletes folder `path` and everything in it; nothing when it does not exist."""
    path = os.fspath(path)
    if tf.io.gfile.exists(path):
        with _os_errors(path):
            tf.io.gfile.rmtree(path)


def copy(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> None:
    with _os_errors(os.fspath(src)):
        tf.io.gfile.copy(os.fspath(src), os.fspath(dst), overwrite=overwrite)


def imread(path: str | os.PathLike, flags: int | None = None) -> np.ndarray | None:
    """`cv2.imread` for any file system (the bytes decoded by `cv2.imdecode`); None when
    the bytes are not an image OpenCV reads, as cv2.imread."""
    import cv2

    data = np.frombuffer(read_bytes(path), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR if flags is None else flags)


def imwrite(path: str | os.PathLike, image: np.ndarray) -> None:
    """`cv2.imwrite` for any file system: encoded by the extension of `path` (`.png`,
    `.jpg`), then written atomically. ValueError when OpenCV cannot encode it."""
    import cv2

    path = os.fspath(path)
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image of shape {image.shape} "
                         f"and dtype {image.dtype} as {os.path.splitext(path)[1]}")
    atomic_write_bytes(path, data.tobytes())
