"""The client side of the bridge, as :mod:`memoh_trio._client` uses it (names re-exported).

| module | owns |
| --- | --- |
| :mod:`.channel` | :class:`BridgeChannel`: grpclib channel and protocol, unary calls, ReadRaw |
| :mod:`.upload` | one WriteRaw stream (read, send, reply) |
| :mod:`.execute` | one Exec stream, as Memoh's server speaks it |
| :mod:`.reader` | the WriteRaw source reader |
| :mod:`.pipe` | :class:`Pipe` between a Trio and an asyncio task, and :func:`pump` |
| :mod:`.errors` | errors mapped at the edge |
| :mod:`.compat` | every private name of grpclib/h2/hyperframe relied on |
"""

from __future__ import annotations

from .channel import STREAM_WINDOW as STREAM_WINDOW
from .channel import BridgeChannel as BridgeChannel
from .errors import SourceFailure as SourceFailure
from .errors import map_error as map_error
from .pipe import Pipe as Pipe
from .pipe import pump as pump
from .reader import SourceSpec as SourceSpec
from .upload import WriteOutcome as WriteOutcome
