"""Unpack untrusted msgpack with limits, turning every failure into one DecodeError."""

from __future__ import annotations

from typing import Any

import msgpack

from shardbus.errors import DecodeError


def unpack_strict(data: bytes | bytearray | memoryview, subject: str, **limits: Any) -> Any:
    """Return the object msgpack decodes from `data`, or raise DecodeError naming `subject`.

    `limits` are msgpack's ``max_*_len`` and ``use_list`` options. They make the
    unpacker reject an oversized item before Python allocates it. Maps must have
    str or bytes keys, and ext types are rejected.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, **limits)
    except msgpack.ExtraData:
        raise DecodeError(f"{subject}: trailing bytes after the msgpack map") from None
    except UnicodeDecodeError:
        # The exception text quotes the invalid bytes, so it is not repeated.
        raise DecodeError(f"{subject}: a msgpack str is not valid UTF-8") from None
    except msgpack.StackError:
        raise DecodeError(f"{subject}: not valid msgpack (nesting deeper than the unpacker allows)") from None
    except msgpack.FormatError:
        raise DecodeError(f"{subject}: not valid msgpack (a reserved format byte)") from None
    except (ValueError, msgpack.UnpackException) as error:
        # msgpack's other messages name a limit ("... exceeds max_bin_len") or
        # a format problem ("incomplete input") and quote no input bytes.
        raise DecodeError(f"{subject}: not valid msgpack ({str(error)[:200]})") from None
