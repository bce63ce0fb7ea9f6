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
Values of declared types (dataclasses, datetimes, ... : docs/values.md)
reach the codec already plain, converted by typed.py, and are rebuilt from
what it decodes by the type their reader declares.

What is written must read back: ``encode`` decodes what it packed (a value
that is not a plain scalar) and refuses, with EncodeError, a value that
fails to decode (a dict key that is a tuple packs as an array, which reads
back as a list, which cannot be a dict key) or decodes to a different value
(tuples as lists are not a difference; values through the hooks are the
hooks' to round-trip). Otherwise a step's result would be written once and
its replay would fail forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import msgpack

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
        self._compress_level = compress_level
        # zstandard loads at the first value large enough to need it: most
        # processes (the command-line tools) never do, and its import is
        # a tenth of the library's.
        self._compressor: Any = None
        self._decompressor: Any = None
        # (blob, value): the last checked blob and what it decoded to, handed
        # out by the next decode of that very blob (a step decodes what it
        # wrote), once, so no decoded object is ever shared.
        self._read_back: tuple[bytes, Any] | None = None
        # Without hooks, packs use Packers kept from one call to the next:
        # ``msgpack.packb`` builds (and frees) a new one per call, ~1 us of
        # a step's ~5 us pack. A Packer's buffer is shared state, so each
        # is taken from its pool for the call (``list.pop`` and ``append``
        # are atomic): another thread packing meanwhile takes another one,
        # a new one if the pool is empty. Only without hooks, because a
        # hook packs again from inside the pack, which a taken Packer
        # would do with a fresh one anyway, at no gain.
        self._loose_packs: list[Callable[[Any], bytes]] = []
        self._strict_packs: list[Callable[[Any], bytes]] = []

    @property
    def has_hooks(self) -> bool:
        """Whether the builder gave encode/decode hooks (they come first for
        a typed value: docs/values.md)."""
        return self._encode_hook is not None

    def _default(self, obj: Any) -> Any:
        if self._encode_hook is None:
            _no_hook(obj)
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
            if self._encode_hook is None:
                pool = self._loose_packs
                try:
                    pack = pool.pop()
                except IndexError:
                    pack = msgpack.Packer(default=_no_hook, use_bin_type=True).pack
                try:
                    return pack(value)
                finally:
                    pool.append(pack)  # its buffer is empty again, even after a refusal
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
        """The blob for ``value``; raise EncodeError if it cannot be encoded.

        Also if it would not read back as an equal value (see the module
        comment); a scalar of a msgpack type always does, so only
        containers and other types are decoded to check.
        """
        blob, back = self.encode_value(value)
        if back is not value and len(blob) <= _READ_BACK_KEPT:  # decoded: keep it
            self._read_back = (blob, back)
        return blob

    def encode_value(self, value: Any) -> tuple[bytes, Any]:
        """``encode``'s blob, and the value as ``decode`` gives it back.

        For a step's result, returned to the workflow on its first run as a
        replay will return it: the read-back check's decode serves, so the
        caller need not decode again after its await (``encode`` keeps one
        read-back for a ``decode`` right after it, which concurrent steps
        overwrite between them). A scalar of a msgpack type is itself.
        """
        if self._encode_hook is None:
            pool = self._strict_packs
            try:
                strict = pool.pop()
            except IndexError:  # the first pack, or another thread's is under way
                strict = _strict_packer()
            try:
                body = strict(value)
            except Exception:  # a type msgpack takes only loosely, or none: the general way
                body = None
            finally:
                pool.append(strict)  # its buffer is empty again, even after a refusal
            if body is not None:
                if type(value) in _SCALARS:
                    return self._framed(body, value), value
                if _HAS_BIN(body):  # maybe a memoryview: compare (_strict_packer)
                    return self._framed(body, value), self._check_reads_back(value, body)
                return self._framed(body, value), self._decoded(value, body)
        body = self._pack(value)
        if type(value) in _SCALARS:
            return self._framed(body, value), value
        back = self._check_reads_back(value, body)
        return self._framed(body, value), back

    def _framed(self, body: bytes, value: Any) -> bytes:
        threshold = self.compress_threshold
        if threshold is not None and len(body) > threshold:
            if self._compressor is None:
                import zstandard

                self._compressor = zstandard.ZstdCompressor(level=self._compress_level)
            packed = self._compressor.compress(body)
            if len(packed) < len(body):
                return _fits(_ZSTD_TAG + packed, value)
        return _fits(_MSGPACK_TAG + body, value)

    def _decoded(self, value: Any, body: bytes) -> Any:
        """What ``body`` decodes to (EncodeError if it does not decode)."""
        try:
            return self._unpack(body)
        except Exception as exc:
            raise EncodeError(type(value).__qualname__, _unreadable(value, exc)) from exc

    def _check_reads_back(self, value: Any, body: bytes) -> Any:
        """What ``body`` decodes to, if that is ``value`` (tuples as lists)."""
        back = self._decoded(value, body)
        try:
            # The C comparison first: true for plain values without tuples.
            parts = None if value == back else _differs(value, back)
        except Exception:  # a hooked type's own __eq__: the hooks' business
            parts = None
        if parts is not None:
            raise EncodeError(
                type(value).__qualname__,
                f"it would read back as a different value (at {''.join(parts) or 'the top'}): "
                "the value could be written but would not be the same when replayed",
            )
        return back

    def decode(self, blob: bytes) -> Any:
        """The value in ``blob`` (ValueError if the blob is malformed)."""
        read_back = self._read_back
        if read_back is not None and read_back[0] is blob:
            self._read_back = None
            return read_back[1]
        if not blob:
            raise ValueError("empty value blob")
        tag = blob[0]
        if tag == TAG_MSGPACK:
            if self._decode_hook is None:  # _unpack inlined: every memoised step comes here
                return _unpackb(blob[1:], strict_map_key=False)
            return self._unpack(blob[1:])
        if tag == TAG_ZSTD:
            if self._decompressor is None:
                import zstandard

                self._decompressor = zstandard.ZstdDecompressor()
            body = self._decompressor.decompress(blob[1:], max_output_size=_MAX_VALUE)
            return self._unpack(body)
        raise ValueError(f"unknown value blob tag {tag:#04x}")


_unpackb = msgpack.unpackb
_MSGPACK_TAG = bytes([TAG_MSGPACK])
_ZSTD_TAG = bytes([TAG_ZSTD])
_READ_BACK_KEPT = 64 * 1024  # larger values are decoded again rather than kept
_SCALARS = frozenset({int, str, float, bool, bytes, type(None)})
_EQUAL_SCALARS = (int, str, bytes, bytearray, memoryview, msgpack.ExtType)


class _Loose(Exception):
    """A value has an object that only a loose pack takes (a subclass, say)."""


def _strict_packer() -> Callable[[Any], bytes]:
    """A pack of exact msgpack types, tuples packed as the lists they read back as.

    Why: a value made only of exact dicts, lists, tuples, strs, ints,
    floats, bools, None, bytes and bytearrays reads back equal to itself,
    tuples as lists (and NaN, which is not equal to itself, as NaN): the
    comparison ``_check_reads_back`` makes would let it pass, so it need
    not be made (~10% of a realistic step's encode). A bin object could be
    a memoryview, which need not read back equal: a body with a bin head
    byte anywhere is compared as before. Anything else (a subclass, a type
    msgpack refuses, an int beyond 64 bits) raises ``_Loose``, and the
    value goes the general way (``Codec._pack``), which packs the very same
    bytes for whatever this one packs.
    """
    packer = msgpack.Packer(default=_strict_default, use_bin_type=True, strict_types=True)
    return packer.pack  # type: ignore[no-any-return]


def _strict_default(obj: Any) -> Any:
    if type(obj) is tuple:  # as a loose pack does
        return list(obj)
    raise _Loose


def _has_bin(body: bytes) -> bool:
    """Whether a bin8/16/32 head byte (0xc4-0xc6) is anywhere in ``body``."""
    return b"\xc4" in body or b"\xc5" in body or b"\xc6" in body


_HAS_BIN = _has_bin


def _no_hook(obj: Any) -> NoReturn:
    """msgpack's ``default`` without hooks: whatever msgpack cannot pack is refused."""
    if type(obj) is int:  # msgpack hands over the ints it cannot hold
        raise EncodeError("int", _INT_RANGE)
    raise EncodeError(type(obj).__qualname__)


def _unreadable(value: Any, exc: Exception) -> str:
    """Why ``value`` fails to decode: the first tuple dict key if there is one."""
    found = _tuple_key(value, "")
    if found is None:
        return f"it would not read back ({type(exc).__name__}: {exc}), so it is not written"
    key, at = found
    return (
        f"the dict key {_short(key)}{' at ' + at if at else ''} is a tuple: it would be "
        "written as an array and read back as a list, which cannot be a dict key, so the "
        "value could never be read; use str or int keys"
    )


def _tuple_key(value: Any, at: str) -> tuple[Any, str] | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, tuple) and type(key) is not msgpack.ExtType:
                return key, at
            found = _tuple_key(item, f"{at}[{_short(key)}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _tuple_key(item, f"{at}[{i}]")
            if found is not None:
                return found
    return None


def _differs(value: Any, back: Any) -> list[str] | None:
    """Where ``back`` (decoded) differs from ``value``, tuples as lists, as the
    parts of a path (empty: right here); None if nowhere.

    Called only where ``value == back`` is false. The C comparison is tried
    first for every item, so only the parts holding tuples (or NaN) are
    walked here. A type's own ``__eq__`` may raise: the caller catches it.
    """
    if isinstance(value, (list, tuple)) and not isinstance(value, msgpack.ExtType):
        if type(back) is not list or len(back) != len(value):
            return []
        if type(value) is not list and list(value) == back:
            return None
        for i, item in enumerate(value):
            item_back = back[i]
            if item == item_back or (type(item) is tuple and list(item) == item_back):
                continue
            where = _differs(item, item_back)
            if where is not None:
                return [f"[{i}]", *where]
        return None
    if isinstance(value, dict):
        if type(back) is not dict or len(back) != len(value):
            return []
        # msgpack keeps a dict's order: compare item by item.
        for (key, item), (key_back, item_back) in zip(value.items(), back.items(), strict=True):
            where = None if key == key_back else _differs(key, key_back)
            if where is not None:
                return [f" (the key {_short(key)})", *where]
            where = None if item == item_back else _differs(item, item_back)
            if where is not None:
                return [f"[{_short(key)}]", *where]
        return None
    if isinstance(value, float):
        return None if value != value and back != back else []  # NaN reads back as NaN
    if value is None or isinstance(value, _EQUAL_SCALARS):
        return []
    return None  # through the codec's hooks: theirs to round-trip


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fits(blob: bytes, value: Any) -> bytes:
    if len(blob) > MAX_BLOB:
        raise EncodeError(
            type(value).__qualname__,
            f"encoded it is {len(blob)} bytes, above the {MAX_BLOB}-byte limit of a "
            "journal record; store big data elsewhere and keep a reference",
        )
    return blob
