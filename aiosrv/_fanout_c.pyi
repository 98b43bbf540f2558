# Types of the compiled core: aiosrv/_fanout_py.py compiled with _core/_fanout_c.pxd
# (setup.py), so its API is _fanout_py's by construction
# (tests/core/test_equivalence.py checks that both define every name listed here).
from aiosrv._fanout_py import (
    HEARTBEAT_INTERVAL as HEARTBEAT_INTERVAL,
)
from aiosrv._fanout_py import (
    HEARTBEAT_TIMEOUT as HEARTBEAT_TIMEOUT,
)
from aiosrv._fanout_py import (
    MAX_SLOTS as MAX_SLOTS,
)
from aiosrv._fanout_py import (
    MAX_TICK as MAX_TICK,
)
from aiosrv._fanout_py import (
    MIN_TICK as MIN_TICK,
)
from aiosrv._fanout_py import (
    OP_BINARY as OP_BINARY,
)
from aiosrv._fanout_py import (
    OP_CLOSE as OP_CLOSE,
)
from aiosrv._fanout_py import (
    OP_CONT as OP_CONT,
)
from aiosrv._fanout_py import (
    OP_PING as OP_PING,
)
from aiosrv._fanout_py import (
    OP_PONG as OP_PONG,
)
from aiosrv._fanout_py import (
    OP_TEXT as OP_TEXT,
)
from aiosrv._fanout_py import (
    STATE_CLOSED as STATE_CLOSED,
)
from aiosrv._fanout_py import (
    STATE_OPEN as STATE_OPEN,
)
from aiosrv._fanout_py import (
    STATE_OVERFLOWED as STATE_OVERFLOWED,
)
from aiosrv._fanout_py import (
    FanOut as FanOut,
)
from aiosrv._fanout_py import (
    FrameReader as FrameReader,
)
from aiosrv._fanout_py import (
    Subscriber as Subscriber,
)
from aiosrv._fanout_py import (
    encode_close as encode_close,
)
from aiosrv._fanout_py import (
    encode_frame as encode_frame,
)
from aiosrv._fanout_py import (
    unmask as unmask,
)
