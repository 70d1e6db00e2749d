"""Malformed requests for any protobuf message, as a careless or hostile caller sends them.

Every field is left unset or filled with a value at the edge of its type: empty and
NUL-laden strings, multi-byte and very long text, path tricks, random bytes, negative
and huge integers, NaN and infinities, enum numbers the contract does not define, and
repeated fields with several such entries. Seeded, so a failure names its request.
"""

from __future__ import annotations

import random
from typing import TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

STRINGS = ["", " ", "x", "\x00", "a\x00b", "é" * 4000, "🦊" * 100, "../../etc/passwd",
           "a" * 100_000, "-1", "ff" * 32, "zz" * 32, "'; drop table users; --",
           "%s%n"]  # fmt: skip
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**62, -(2**62)]
FLOATS = [0.0, -0.0, -1.0, 1e-300, 1e308, float("nan"), float("inf"), float("-inf")]
_UNSIGNED = {
    FieldDescriptor.TYPE_UINT32: 2**32,
    FieldDescriptor.TYPE_FIXED32: 2**32,
    FieldDescriptor.TYPE_UINT64: 2**64,
    FieldDescriptor.TYPE_FIXED64: 2**64,
}
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}


def malformed(message_type: type[M], rng: random.Random) -> M:
    """One request of `message_type` with fields set at random to edge values."""
    message = message_type()
    _fill(message, rng, depth=0)
    return message


def _fill(message: Message, rng: random.Random, depth: int) -> None:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            if field.is_repeated:
                for _ in range(rng.choice([1, 1, 3])):
                    _fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                _fill(getattr(message, field.name), rng, depth + 1)
            continue
        if field.is_repeated:
            values = [_scalar(field, rng) for _ in range(rng.choice([1, 1, 3]))]
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, _scalar(field, rng))


def _scalar(field: FieldDescriptor, rng: random.Random) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 32, 64, 5000]))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice(FLOATS)
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([0, 1, 2, 99])  # 99: a number the contract does not define
    value = rng.choice(INTS)
    if kind in _UNSIGNED:
        return abs(value) % _UNSIGNED[kind]
    if kind in _INT32:
        return max(min(value, 2**31 - 1), -(2**31))
    return value


# Bytes that are no protobuf message of any type: a length-delimited field claiming more
# bytes than follow, a varint that never ends, a group that never closes, and groups
# nested past the parser's depth limit.
GARBAGE_PROTOBUF = [
    b"\x0a\xff\xff\xff\x0f",
    b"\x08" + b"\xff" * 11,
    b"\x0b\x0b\x0b",
    b"\x0b" * 200 + b"\x0c" * 200,
]
