"""protobuf text format, as config.pbtxt is written, read into {field: [values]}; standard library only."""

from __future__ import annotations

import re
from typing import Any

from service.errors import ConfigError

_SPACE = re.compile(r"(?:\s+|#[^\n]*)*")  # white space and comments
_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?(?![A-Za-z0-9_]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:,;])
""", re.VERBOSE)
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
MAX_NESTING = 32  # message depth; deeper config.pbtxt text is refused rather than recursed into


def _unquote(text: str) -> str:
    """A quoted protobuf string: C escapes, octal and hex bytes (TextFormat writes non-ASCII as octal), UTF-8."""
    out, pos = bytearray(), 0
    body = text[1:-1]
    for match in _ESCAPE.finditer(body):
        out += body[pos:match.start()].encode("utf-8")
        code = match.group(1)
        if code[0] == "x":
            out.append(int(code[1:], 16))
        elif code[0] in "01234567":
            out.append(int(code, 8) & 0xFF)
        else:
            out += _ESCAPES.get(code, code.encode("utf-8"))
        pos = match.end()
    out += body[pos:].encode("utf-8")
    return out.decode("utf-8", "replace")


class _Parser:
    """protobuf text format into {field: [values]} (every field a list: repeated or not, as written)."""

    def __init__(self, text: str):
        self.tokens: list[tuple[str, Any]] = []
        pos = _SPACE.match(text).end()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match:
                line = text.count("\n", 0, pos) + 1
                raise ConfigError(f"config.pbtxt: line {line}: cannot read {text[pos:pos + 20]!r}")
            kind = match.lastgroup
            value = match.group(kind)
            if kind == "string":
                value = _unquote(value)
            elif kind == "number":
                value = float(value.rstrip("fF")) if re.search(r"[.eEfF]", value) else int(value)
            self.tokens.append((kind, value))
            pos = _SPACE.match(text, match.end()).end()
        self.at = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", None)

    def take(self, punct: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if punct is not None and token != ("punct", punct):
            raise ConfigError(f"config.pbtxt: expected '{punct}', found {token[1]!r}")
        self.at += 1
        return token

    def message(self, close: str | None) -> dict[str, list]:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ConfigError(f"config.pbtxt: messages nested more than {MAX_NESTING} deep")
        fields: dict[str, list] = {}
        while True:
            kind, value = self.peek()
            if close is not None and (kind, value) == ("punct", close):
                self.take()
                self.depth -= 1
                return fields
            if kind == "end":
                if close is not None:
                    raise ConfigError(f"config.pbtxt: missing '{close}' at the end")
                return fields
            if kind != "word":
                raise ConfigError(f"config.pbtxt: expected a field name, found {value!r}")
            self.take()
            if self.peek() == ("punct", ":"):
                self.take()
            values = fields.setdefault(value, [])
            if self.peek() == ("punct", "["):
                self.take()
                while self.peek() != ("punct", "]"):
                    values.append(self.value(value))
                    if self.peek() == ("punct", ","):
                        self.take()
                self.take("]")
            else:
                values.append(self.value(value))
            if self.peek() in (("punct", ","), ("punct", ";")):
                self.take()

    def value(self, name: str) -> Any:
        kind, value = self.take()
        if (kind, value) in (("punct", "{"), ("punct", "<")):
            return self.message("}" if value == "{" else ">")
        if kind in ("string", "number"):
            return value
        if kind == "word":
            return {"true": True, "false": False, "True": True, "False": False}.get(value, value)
        raise ConfigError(f"config.pbtxt: field '{name}': expected a value, found {value!r}")


def parse_pbtxt(text: str) -> dict[str, list]:
    """Parse protobuf text format; raise ConfigError naming the line or field that cannot be read."""
    return _Parser(text).message(None)

