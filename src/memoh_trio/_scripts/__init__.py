"""Every shell script the migrator runs in the container, and the parser of its output. No I/O.

Rule 1 (as in h11's ``_state.py``): whatever runs container-side is built in this package, from
plain data, and whatever it prints is read back here; the transfer methods
(:mod:`memoh_trio._migrate`) only send the scripts and act on the parsed results. Tested against
real shells (dash, bash, busybox ``sh`` with busybox applets) without a container or a socket.

How a script reaches the container (real containers, issue 10):

* The ``Exec`` command (the first message, ``/bin/sh -c COMMAND``) is always short and fixed:
  Linux caps one argument at 128 KiB (``MAX_ARG_STRLEN``), and a script listing 1,000 paths
  does not fit. The variable part travels as stdin: a generated script read by ``sh -s``
  (:data:`RUN_STDIN`), records read by a fixed python3 program, or a tar archive whose
  ``.memoh-run`` member is the listing script (:func:`extract_command`).
* No silent step: every per-entry script prints one record per entry, ``O <i>`` (done) or
  ``F <i> <why>`` (failed), and the parsers fail every entry that has no record. A server that
  drops stdin (Memoh's drops the stdin of the first message) runs an empty script, which prints
  nothing: every entry fails, the run cannot end "migrated".
* Never through a symlink: before a directory is written into, a link created, a mode or mtime
  applied, each component of the path is checked with ``[ -L ]`` (python: ``os.path.islink``);
  a symlink on the way, or a real directory where a file or link must go, fails that entry and
  touches nothing. Missing directories are created one component at a time (no ``mkdir -p``,
  which walks through links).
* POSIX ``sh`` and the intersection of GNU coreutils and busybox options only; mtimes to the
  nanosecond where the container can (python3, or GNU ``touch -d @S.N``), whole seconds where it

Modules (one concern each; the names the migrator and the tests use are re-exported here, so
callers read ``_scripts.NAME``):

* ``shell``: quoting, :data:`RUN_STDIN`, :func:`in_dir`, :func:`with_python`, the ``PRELUDE``
  shell functions (``memoh_dir``, ``memoh_safe``);
* ``probe``: the probe commands, :class:`Capabilities`, :func:`meta_method`;
* ``records``: the ``O``/``F`` records and their parsers (:func:`parse_records`,
  :func:`failures`);
* ``tar``: a tar batch's extract command, listing and its parser, moves (shell or python3);
* ``links``: the destination's symlinks (``find``), the source's recreated (shell or python3);
* ``meta``: modes and mtimes (shell or python3), the final ``sync``;
* ``sha256``: hashes of one file or many;
* ``flush``: ``sync -f`` (``syncfs``) of the destination instead of a global ``sync``
  (standalone: not used by the migrator yet).
"""

from __future__ import annotations

from .links import FIND_LINKS_COMMAND as FIND_LINKS_COMMAND
from .links import LINKS_FOUND as LINKS_FOUND
from .links import PY_LINKS as PY_LINKS
from .links import links_script as links_script
from .links import parse_links_found as parse_links_found
from .links import py_link_records as py_link_records
from .meta import PY_META as PY_META
from .meta import SYNC_COMMAND as SYNC_COMMAND
from .meta import SYNCED as SYNCED
from .meta import meta_script as meta_script
from .meta import py_meta_records as py_meta_records
from .probe import PROBE_COMMAND as PROBE_COMMAND
from .probe import PY_PROBE_COMMAND as PY_PROBE_COMMAND
from .probe import SHELL_META_MAX as SHELL_META_MAX
from .probe import SHELL_PROBE_COMMAND as SHELL_PROBE_COMMAND
from .probe import Capabilities as Capabilities
from .probe import Check as Check
from .probe import MetaMethod as MetaMethod
from .probe import Precision as Precision
from .probe import meta_method as meta_method
from .probe import method_precision as method_precision
from .probe import parse_probe as parse_probe
from .records import CHECK_FAILED as CHECK_FAILED
from .records import MOVE_FAILED as MOVE_FAILED
from .records import NO_RECORD as NO_RECORD
from .records import failures as failures
from .records import parse_records as parse_records
from .sha256 import parse_sha256 as parse_sha256
from .sha256 import parse_sha256_many as parse_sha256_many
from .sha256 import sha256_command as sha256_command
from .sha256 import sha256_many as sha256_many
from .shell import RUN_STDIN as RUN_STDIN
from .shell import in_dir as in_dir
from .shell import with_python as with_python
from .tar import MOVES_MEMBER as MOVES_MEMBER
from .tar import NO_RUN_EXIT as NO_RUN_EXIT
from .tar import PY_MOVE as PY_MOVE
from .tar import RUN_MEMBER as RUN_MEMBER
from .tar import TAR_FAILED_EXIT as TAR_FAILED_EXIT
from .tar import dir_prefixes as dir_prefixes
from .tar import extract_command as extract_command
from .tar import listing_script as listing_script
from .tar import make_dirs as make_dirs
from .tar import move_script as move_script
from .tar import parse_listing as parse_listing
from .tar import py_move_command as py_move_command
from .tar import py_move_records as py_move_records
from .tar import py_place_command as py_place_command
from .tar import py_place_records as py_place_records
from .tar import verify_move_script as verify_move_script
