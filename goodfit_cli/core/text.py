"""Text from files made safe to print: one helper, used where messages are made.

Names read from files (tensor names, metadata, folder names, recipe values) can carry terminal
control sequences (ESC ... rewrites the screen, sets the window title) and Unicode bidi controls
(U+202E shows "gpj.exe" as "exe.jpg"). `printable` spells each such character as a Python escape
(`\\x1b`, `\\u202e`), so a message is one line and shows exactly the characters that are there.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_LINES = [0x2028, 0x2029]  # line and paragraph separators: a line break in some terminals


def _escape(code: int) -> str:
    ch = chr(code)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_TABLE = {c: _escape(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), *_BIDI, *_LINES]}


def printable(text: str) -> str:
    """`text` with control, bidi and line-separator characters and lone surrogates escaped."""
    text = str(text).translate(_TABLE)
    # a lone surrogate (a non-UTF-8 file name, a YAML "\ud83d") cannot be printed: escape it too
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
