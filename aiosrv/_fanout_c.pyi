# Types of the compiled core (_core/_fanout_c.pyx); the same API as _fanout_py.
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
    Subscriber as Subscriber,
)
from aiosrv._fanout_py import (
    encode_close as encode_close,
)
from aiosrv._fanout_py import (
    encode_frame as encode_frame,
)
