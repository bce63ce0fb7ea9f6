"""User values <-> blobs. Pure.

A blob is one tag byte and a body:

* ``0x00`` the value as msgpack;
* ``0x01`` the same msgpack, zstd-compressed (for values above a threshold
  when compression saves space).

Values are msgpack types (None, bool, int, float, str, bytes, list, tuple,
dict). Tuples come back as lists, on the first run as on replays: a step
returns the *decoded* blob, so a workflow sees the same value whether the
step ran or was memoised. Other types go through the user's hooks: ``encode``
maps an object to ``(tag, plain)`` with ``plain`` encodable; the library
stores it as msgpack ext type 1 and ``decode(tag, plain)`` rebuilds it.
Decoding never constructs anything else: no pickle, no class lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import zstandard

from .format import MAX_RECORD

TAG_MSGPACK = 0x00
TAG_ZSTD = 0x01
EXT_USER = 1
DEFAULT_COMPRESS_THRESHOLD = 4096
_MAX_VALUE = MAX_RECORD  # a value cannot be larger than a record
# A stored blob must fit in one record with the record's other fields
# (instance id, key): a larger one would be refused by the framing layer
# deep inside the journal's appender, after the caller was told nothing.
MAX_BLOB = MAX_RECORD - 64 * 1024

_INT_RANGE = "an int outside msgpack's 64 bits (-2**63 to 2**64-1); store it as a str"

EncodeHook = Callable[[Any], tuple[str, Any]]
DecodeHook = Callable[[str, Any], Any]

NONE_BLOB = bytes([TAG_MSGPACK]) + msgpack.packb(None)


class EncodeError(TypeError):
    """A value cannot be encoded; ``type_name`` names the offending type."""

    def __init__(self, type_name: str, reason: str = "") -> None:
        super().__init__(reason or f"cannot encode {type_name}")
        self.type_name = type_name
        self.reason = reason


class Codec:
    """Encode and decode user values, with optional hooks and compression."""

    def __init__(
        self,
        encode: EncodeHook | None = None,
        decode: DecodeHook | None = None,
        *,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        compress_level: int = 3,
    ) -> None:
        self._encode_hook = encode
        self._decode_hook = decode
        self.compress_threshold = compress_threshold
        self._compressor = zstandard.ZstdCompressor(level=compress_level)
        self._decompressor = zstandard.ZstdDecompressor()

    def _default(self, obj: Any) -> Any:
        if self._encode_hook is None:
            if type(obj) is int:  # msgpack hands over the ints it cannot hold
                raise EncodeError("int", _INT_RANGE)
            raise EncodeError(type(obj).__qualname__)
        try:
            tag, plain = self._encode_hook(obj)
        except EncodeError:
            raise
        except Exception as exc:
            raise EncodeError(type(obj).__qualname__, f"codec encode hook: {exc!r}") from exc
        if type(tag) is not str:
            raise EncodeError(type(obj).__qualname__, "codec encode hook must return (str, value)")
        return msgpack.ExtType(EXT_USER, self._pack([tag, plain]))

    def _pack(self, value: Any) -> bytes:
        try:
            return msgpack.packb(value, default=self._default, use_bin_type=True)  # type: ignore[no-any-return]
        except EncodeError:
            raise
        except OverflowError as exc:  # msgpack's ints are 64 bits
            raise EncodeError(type(value).__qualname__, _INT_RANGE) from exc
        except (TypeError, ValueError) as exc:
            raise EncodeError(type(value).__qualname__, str(exc)) from exc

    def _ext(self, code: int, data: bytes) -> Any:
        if code != EXT_USER or self._decode_hook is None:
            return msgpack.ExtType(code, data)
        tag, plain = self._unpack(data)
        return self._decode_hook(tag, plain)

    def _unpack(self, data: bytes) -> Any:
        if self._decode_hook is None:  # msgpack's defaults otherwise: fewer keywords to parse
            return msgpack.unpackb(data, strict_map_key=False)
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=self._ext, use_list=True
        )

    def encode(self, value: Any) -> bytes:
        """The blob for ``value``; raise EncodeError if it cannot be encoded."""
        body = self._pack(value)
        threshold = self.compress_threshold
        if threshold is not None and len(body) > threshold:
            packed = self._compressor.compress(body)
            if len(packed) < len(body):
                return _fits(bytes([TAG_ZSTD]) + packed, value)
        return _fits(bytes([TAG_MSGPACK]) + body, value)

    def decode(self, blob: bytes) -> Any:
        """The value in ``blob`` (ValueError if the blob is malformed)."""
        if not blob:
            raise ValueError("empty value blob")
        tag = blob[0]
        if tag == TAG_MSGPACK:
            return self._unpack(blob[1:])
        if tag == TAG_ZSTD:
            body = self._decompressor.decompress(blob[1:], max_output_size=_MAX_VALUE)
            return self._unpack(body)
        raise ValueError(f"unknown value blob tag {tag:#04x}")


def _fits(blob: bytes, value: Any) -> bytes:
    if len(blob) > MAX_BLOB:
        raise EncodeError(
            type(value).__qualname__,
            f"encoded it is {len(blob)} bytes, above the {MAX_BLOB}-byte limit of a "
            "journal record; store big data elsewhere and keep a reference",
        )
    return blob
