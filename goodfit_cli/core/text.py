"""Text from files made safe to print: one helper, used where messages are made.

Names read from files (tensor names, metadata, folder names, recipe values) can carry terminal
control sequences (ESC ... rewrites the screen, sets the window title) and Unicode bidi controls
(U+202E shows "gpj.exe" as "exe.jpg"). `printable` spells each such character as a Python escape
(`\\x1b`, `\\u202e`), so a message is one line and shows exactly the characters that are there.
Credentials in URLs (`postgresql://user:PASSWORD@host/db`, `?password=...`) are replaced by
`***` (`redact`), so no message, log line or report shows a secret.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*):[^\s/]*@")
_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|token|access_token|api_key|key)=)[^&;\s]+", re.IGNORECASE)

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_LINES = [0x2028, 0x2029]  # line and paragraph separators: a line break in some terminals


def _escape(code: int) -> str:
    ch = chr(code)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_TABLE = {c: _escape(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), *_BIDI, *_LINES]}


def redact(text: str) -> str:
    """`text` with the password of every URL (`scheme://user:PASSWORD@`) and secret query
    parameters (`password=`, `token=` ...) replaced by `***`."""
    return _QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", str(text)))


def printable(text: str) -> str:
    """`text` with credentials redacted, and control, bidi and line-separator characters and
    lone surrogates escaped."""
    text = redact(text).translate(_TABLE)
    # a lone surrogate (a non-UTF-8 file name, a YAML "\ud83d") cannot be printed: escape it too
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
