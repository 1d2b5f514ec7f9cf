"""Files replaced whole: written beside their final path, then renamed over it, so that a reader,
or a run resumed after a kill, finds the old file or the new one and never half of one."""
from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator


@contextlib.contextmanager
def replaced(path: str, mode: str = "w", durable: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """A file to write in place of `path`; it becomes `path` when the block ends without an error
    (and is removed when it raises). `durable` also fsyncs the file and its folder, so that the
    new file survives a power cut."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_folder(os.path.dirname(os.path.abspath(path)))


def write_json(path: str, data: Any, **dump_kwargs: Any) -> None:
    """`data` as indented JSON in place of `path`."""
    with replaced(path) as f:
        json.dump(data, f, indent=2, **dump_kwargs)


def fsync_folder(folder: str) -> None:
    """Makes a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself is atomic
        pass
    finally:
        os.close(fd)
