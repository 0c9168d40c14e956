"""Request parsing that turns undecodable bytes into ``INVALID_ARGUMENT`` naming the field.

gRPC's own deserialisation failure ends a call with ``INTERNAL`` ("Exception deserializing
request!"), which blames the server for the caller's bytes. The interceptor
(:mod:`serving.api.interceptors`) therefore hands handlers raw bytes and parses them with
:func:`parse_request`: malformed protobuf or a string field holding invalid UTF-8 (proto3
strings must be UTF-8) raises :class:`~serving.errors.InvalidArgumentError`. For invalid
UTF-8 the field is found by walking the wire format against the message descriptor
(``requests[3].user_id``), since the protobuf runtime only says that *some* string was bad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from serving.errors import InvalidArgumentError

# Deeper than any recsys.v1 message; a hostile nesting cannot make the walk recurse further.
_MAX_DEPTH: Final = 32
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _MalformedError(Exception):
    """The bytes are not a well-formed protobuf message (beyond a bad UTF-8 string)."""


def parse_request(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    """``deserialize(data)`` (a generated ``Message.FromString``); raises
    :class:`InvalidArgumentError` when the bytes do not parse.

    The error names the string field holding invalid UTF-8 when there is one, else it says
    the bytes are not a valid message of that type.
    """
    try:
        return deserialize(data)
    except DecodeError:
        # FromString is bound to the message class, which carries the descriptor.
        descriptor: Descriptor | None = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        field = None
        if descriptor is not None:
            try:
                field = bad_utf8_field(descriptor, data)
            except _MalformedError:
                field = None
        if field is not None:
            raise InvalidArgumentError(field, "not valid UTF-8") from None
        name = descriptor.full_name if descriptor is not None else "request"
        raise InvalidArgumentError("request", f"not a valid {name} message (malformed protobuf)") from None


def bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "", depth: int = 0) -> str | None:
    """The path of the first string field in ``data`` that is not valid UTF-8, or None.

    Raises :class:`_MalformedError` when the wire format itself is broken before such a field.
    """
    if depth > _MAX_DEPTH:
        raise _MalformedError
    counts: dict[int, int] = {}
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH:
            size, pos = _varint(data, pos)
            payload = data[pos : pos + size]
            if len(payload) != size:
                raise _MalformedError
            pos += size
            field = descriptor.fields_by_number.get(number)
            if field is not None:
                index = counts.get(number, 0)
                counts[number] = index + 1
                found = _check_payload(field, payload, _path(prefix, field, index), depth)
                if found is not None:
                    return found
        else:  # groups (deprecated, unused by recsys.v1) or garbage
            raise _MalformedError
        if pos > end:
            raise _MalformedError
    return None


def _check_payload(field: FieldDescriptor, payload: bytes, path: str, depth: int) -> str | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return path
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return bad_utf8_field(field.message_type, payload, path + ".", depth + 1)
    return None


def _path(prefix: str, field: FieldDescriptor, index: int) -> str:
    is_map = field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    if is_map:
        # A map entry's "key" / "value" fields follow: user_attributes.key.
        return f"{prefix}{field.name}"
    repeated = field.is_repeated
    return f"{prefix}{field.name}[{index}]" if repeated else f"{prefix}{field.name}"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _MalformedError
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
