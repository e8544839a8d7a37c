"""Content-Encoding of request and response bodies: gzip and deflate, with the body-size limit on what inflates."""

from __future__ import annotations

import gzip
import zlib

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo the request's Content-Encoding header (None: absent), gzip or deflate (a zlib stream), refusing output
    over `limit` bytes (a zip bomb).

    An empty value is refused (415) like an unknown one: granian hands the app an empty string for a value with
    bytes outside visible ASCII, which is no content coding either, and must not pass for 'identity'."""
    if content_encoding is None:
        return body
    encoding = content_encoding.strip(" \t").lower()
    if not encoding:
        raise UnsupportedMediaType("Content-Encoding is empty or not ASCII; send gzip, deflate or identity")
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding '{encoding[:32]}' is not supported; "
                                   "send gzip, deflate or identity")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data ({exc})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"request body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {encoding} data")
    if inflater.unused_data:  # silently dropping what follows would answer a request the client did not send
        raise BadRequest(f"request body has {len(inflater.unused_data)} bytes after the end of its {encoding} "
                         "data (one stream expected)")
    return data


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """Compress a response as the client's Accept-Encoding asks (gzip or deflate), else leave it as is."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")
                if not part.replace(" ", "").lower().endswith(("q=0", "q=0.0", "q=0.00", "q=0.000"))}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None
