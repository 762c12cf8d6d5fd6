"""The gRPC status of an error raised by :mod:`memoh_trio._fs` (pure)."""

from __future__ import annotations

import errno

from .._errors import Status
from .._paths import PathError, PathEscape

_ERRNO_STATUS: dict[int, Status] = {
    errno.ENOENT: Status.NOT_FOUND,
    errno.EEXIST: Status.ALREADY_EXISTS,
    errno.ENOTEMPTY: Status.FAILED_PRECONDITION,
    errno.ENOTDIR: Status.FAILED_PRECONDITION,
    errno.EISDIR: Status.FAILED_PRECONDITION,
    errno.EXDEV: Status.FAILED_PRECONDITION,
    errno.EBUSY: Status.FAILED_PRECONDITION,
    errno.EACCES: Status.PERMISSION_DENIED,
    errno.EPERM: Status.PERMISSION_DENIED,
    errno.EROFS: Status.PERMISSION_DENIED,
    # ELOOP under O_NOFOLLOW: a symlink appeared where a directory/file was expected.
    errno.ELOOP: Status.PERMISSION_DENIED,
    errno.ENOSPC: Status.RESOURCE_EXHAUSTED,
    errno.EDQUOT: Status.RESOURCE_EXHAUSTED,
    errno.EFBIG: Status.RESOURCE_EXHAUSTED,
    errno.EMFILE: Status.RESOURCE_EXHAUSTED,
    errno.ENFILE: Status.RESOURCE_EXHAUSTED,
    errno.ENOMEM: Status.RESOURCE_EXHAUSTED,
    errno.ENAMETOOLONG: Status.INVALID_ARGUMENT,
    errno.EINVAL: Status.INVALID_ARGUMENT,
    errno.EILSEQ: Status.INVALID_ARGUMENT,
}


def status_for(exc: BaseException) -> tuple[Status, str]:
    """The gRPC status and message for an error raised by this package (pure)."""
    if isinstance(exc, PathEscape):
        return Status.PERMISSION_DENIED, str(exc)
    if isinstance(exc, PathError):
        return Status.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnicodeError):
        return Status.INVALID_ARGUMENT, f"path is not valid UTF-8: {exc}"
    if isinstance(exc, OSError):
        code = _ERRNO_STATUS.get(exc.errno or 0, Status.INTERNAL)
        what = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        return code, f"{where}{what}"
    return Status.INTERNAL, f"{type(exc).__name__}: {exc}"
