"""Synchronous filesystem operations of the server, confined under a root directory fd.

Every operation walks the request path one component at a time from the root's file descriptor,
``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``, holding each directory open: there is
no check-then-open window. A symlink met on the way is read with ``readlinkat`` and its target is
walked the same way (relative targets only, never above ROOT, at most
:data:`~.resolve.MAX_SYMLINKS`), so nothing outside ROOT is ever opened, listed, written, renamed
or deleted, even if a directory is swapped for a symlink while the call runs. Final components
that are acted on (written, renamed, deleted) are never followed: the entry itself is the target.

Functions here do blocking system calls and no async I/O; the bridge calls them directly on the
hot paths (WriteRaw, ReadRaw chunks) and from a worker thread for calls that can take long
(recursive ListDir/DeleteFile, ReadFile).

Errors: :class:`~memoh_trio._paths.PathError` for confinement and malformed paths, ``OSError``
(with ``filename`` set to the request path) for the rest; :func:`status_for` maps both onto gRPC
status codes.

Modules (the names callers use are re-exported here):

* ``resolve``: the confined, no-follow walk every operation starts with; ``open_dir``;
* ``read``: Stat, ListDir, ReadFile, the file a ReadRaw streams; Go's formatting of entries;
* ``modify``: Mkdir, DeleteFile, Rename;
* ``raw``: ``RawWriter`` (WriteRaw: temporary sibling, commit by rename, direct I/O) and
  ``write_file``;
* ``hooks``: ``ServerHooks``, fault injection for tests;
* ``errors``: ``status_for``, errors to gRPC status codes (pure).
"""

from __future__ import annotations

from .errors import status_for as status_for
from .hooks import ServerHooks as ServerHooks
from .modify import delete as delete
from .modify import mkdir as mkdir
from .modify import rename as rename
from .raw import TEMP_PREFIX as TEMP_PREFIX
from .raw import RawWriter as RawWriter
from .raw import write_file as write_file
from .read import LINE_KEEP_BYTES as LINE_KEEP_BYTES
from .read import READ_MAX_BYTES as READ_MAX_BYTES
from .read import READ_MAX_LINES as READ_MAX_LINES
from .read import Entry as Entry
from .read import go_mode_string as go_mode_string
from .read import list_dir as list_dir
from .read import open_regular as open_regular
from .read import read_file as read_file
from .read import rfc3339 as rfc3339
from .read import stat as stat
from .resolve import open_dir as open_dir
