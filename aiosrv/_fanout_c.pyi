# Types of the compiled core (_core/_fanout_c.pyx); the same API as _fanout_py.
from aiosrv._fanout_py import (
    OP_BINARY as OP_BINARY,
    OP_CLOSE as OP_CLOSE,
    OP_CONT as OP_CONT,
    OP_PING as OP_PING,
    OP_PONG as OP_PONG,
    OP_TEXT as OP_TEXT,
    STATE_CLOSED as STATE_CLOSED,
    STATE_OPEN as STATE_OPEN,
    STATE_OVERFLOWED as STATE_OVERFLOWED,
    FanOut as FanOut,
    Subscriber as Subscriber,
    encode_close as encode_close,
    encode_frame as encode_frame,
)
