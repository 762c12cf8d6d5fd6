"""The migrator: copy a tree into a container; rename the source only if all of it made it.

Its parts, each owning one thing and never calling back up:

* :mod:`.run` -- :func:`migrate`: lock, resume, walk → route (pure, :func:`memoh_trio._plan.route`)
  → dispatch under one nursery and ``CapacityLimiter``, decide (pure,
  :func:`memoh_trio._finalize.decide`), rename;
* :mod:`.lifecycle` -- every later step of an entry's life, as one table (pure): phases, events
  (a record, a failure, a capability learned) and the next phase; every choice between ways
  (hold for python3 or check at once, python3 or the shell) from what is known;
* :mod:`.steps` -- the executor: carries out the steps the table names, in the copy nursery;
* :mod:`.agentsteps` -- the table's python3 rows carried out by the container's agent (one
  python3 for the run over one Exec, :mod:`memoh_trio._agent`), where it said hello;
* :mod:`.context` -- the frozen options, the client with deadlines, shared constants;
* :mod:`.outcomes` -- what the batch steps return, errors in plain words (a leaf);
* :mod:`.ledger` -- the counts, failures and fatal error of a run: one method per counting rule;
* :mod:`.stream` -- one file via WriteRaw → temporary sibling → verify → Rename;
* :mod:`.tar` -- one tar batch of small files; returns what was copied, failed or changed;
* :mod:`.meta` -- the container's tools (probe); the queues of batched Execs (symlinks, hash
  checks, permission bits and mtimes), each batch returning what was done and what failed; the
  container's ``sync``;
* :mod:`.resume` -- the destination: created or checked, what is already there, stale
  temporaries, hash checks;
* :mod:`.preflight` -- the source: reruns, typos, empty sources, data roots; its final rename;
* :mod:`.bots` -- :func:`migrate_bot`, :func:`migrate_all`, :func:`list_bots`,
  :func:`check_targets`, :func:`stopped_report`.

Every container-side script, and the parser of its output, is in :mod:`memoh_trio._scripts`.

How one :func:`migrate` runs:

1. The source is resolved to its real directory and checked (:func:`check_source`) and the
   single-flight lock next to that directory is taken (:mod:`memoh_trio._lock`; a dry run takes
   none).
2. Resume: one recursive ``ListDir`` of the destination up front gives what is already there
   (rsync's quick check: same size and same mtime second → not resent). Stale temporary files of
   an earlier interrupted run are deleted.
3. The walk (:mod:`memoh_trio._walk`) streams entries from a worker thread into a channel (it
   starts with the run: the source is listed while step 2 and the probe of the container's
   tools run, and waits in the channel until they are done); each entry is classified by pure
   code (:func:`memoh_trio._plan.classify`) and dispatched: small files into tar batches, the
   others into a bounded queue of file streams. A ``CapacityLimiter`` bounds the streams and
   batches in flight; a feeder task waits for a slot before starting the next stream, so
   neither tasks nor memory grow with the tree, and the walk is never held up by large files
   while small ones could already be batched.
4. Each file is opened safely (:mod:`memoh_trio._source`: no symlink followed, no FIFO waited
   for, the inode the walk saw), goes to a temporary sibling name through ``WriteRaw`` (size
   pinned to the size seen at ``lstat`` time; optional SHA-256 computed while reading), is
   verified (bytes read == bytes written == size == the container's ``Stat`` of the temporary
   file; the open file and the path still the same file; with ``verify="sha256"`` the
   container's hash of the temporary file), and only then moved onto its final name with
   ``Rename``. On any failure or cancellation the temporary file is deleted (shielded, bounded
   in time). So no final path ever holds a partial file, even against a server that writes in
   place.
5. Symlinks are recreated and permission bits / mtimes applied in the container through batched
   ``Exec`` calls (one shell script per batch, not one RPC per entry); directories last, deepest
   first, once nothing more is written into them.

   Where the container runs python3, one Exec starts the container's agent instead of the
   probe, and it carries out every container step of the run over that one stream: small
   files in batches (written, checked, given their modes and mtimes, renamed), the placement
   of streamed files (whose bytes ``WriteRaw`` put in the destination's top directory),
   symlinks, modes and mtimes, empty directories, resume's hashes and the flush; every path
   opened through directory descriptors without following a symlink. An agent that is lost
   mid-run leaves its unanswered entries to the shell's or the per-file way
   (:mod:`.lifecycle`'s ``PY_LOST`` rows).
6. After the copy nursery has exited, :func:`memoh_trio._finalize.decide` rules on the rename and
   ``os.rename`` follows with no checkpoint in between (and KeyboardInterrupt-protected), so a
   cancellation, an interrupt or a fatal error can never reach the rename after a partial copy;
   and only if the source path still names the directory that was copied (same inode).

Error handling:
    A per-entry problem (unreadable file, file changed while copied, server refused a write,
    stalled stream) becomes a :class:`~memoh_trio._report.Failure` in the report; the others go on
    and the source is not renamed. A lost connection (:class:`~memoh_trio._errors.Unavailable`) or
    a refused credential (:class:`~memoh_trio._errors.Unauthenticated`) is fatal: the remaining
    work is cancelled promptly and that one error is raised. Bad arguments raise
    :class:`~memoh_trio._errors.ConfigError`, a bad source :class:`~memoh_trio._errors.SourceError`.
"""


from .bots import NOT_STARTED as NOT_STARTED
from .bots import STOPPED as STOPPED
from .bots import ClientSource as ClientSource
from .bots import bot_source as bot_source
from .bots import check_targets as check_targets
from .bots import list_bots as list_bots
from .bots import migrate_all as migrate_all
from .bots import migrate_bot as migrate_bot
from .bots import stopped_report as stopped_report
from .context import DEFAULT_BOT_CONCURRENCY as DEFAULT_BOT_CONCURRENCY
from .context import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from .context import DEFAULT_STALL_TIMEOUT as DEFAULT_STALL_TIMEOUT
from .context import MIGRATED_SUFFIX as MIGRATED_SUFFIX
from .context import PART_PREFIX as PART_PREFIX
from .context import SERVER_TEMP_PREFIX as SERVER_TEMP_PREFIX
from .context import Verify as Verify
from .context import control_timeout as control_timeout
from .context import norm_dest as norm_dest
from .preflight import check_data_root as check_data_root
from .preflight import check_source as check_source
from .run import migrate as migrate
