"""Long log lines broken for a terminal of a given width: at a separator or a space, never
mid-word where a word fits, never past the width (the terminal would break it anywhere)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text


def _fitting(plain: str, start: int, room: int) -> int:
    """The end of the longest run of `plain` from `start` that takes at most `room` cells."""
    end, used = start, 0
    while end < len(plain) and used + cell_len(plain[end]) <= room:
        used += cell_len(plain[end])
        end += 1
    return end


def _cut(plain: str, start: int, fit: int) -> int:
    """Where to end a line that runs from `start` and may reach `fit`: after the last '; ' or
    ', ' or before the last two spaces (a progress line's parts) in the second half of it, else
    at its last space (one just past `fit` too), else at `fit` (a path longer than a line)."""
    found = [plain.rfind(s, start, fit) for s in ("; ", ", ", "  ")]
    sep = max([i + 1 for i in found[:2] if i >= 0] + [found[2]])  # "  ": between a line's parts
    if sep > start and sep - start >= (fit - start) // 2:
        return sep
    space = plain.rfind(" ", start + 1, fit + 1)
    return space if space > start else max(fit, start + 1)


def wrap_lines(text: Text, width: int) -> list[Text]:
    """`text` (one line, its styles kept) as lines of at most `width` cells, each after the
    first indented two spaces more than `text` is: the first line holds as much as fits."""
    plain = text.plain
    indent = len(plain) - len(plain.lstrip(" ")) + 2
    room, start, lines = max(width, 1), 0, []
    while cell_len(plain[start:]) > room:
        end = _cut(plain, start, _fitting(plain, start, room))
        line = text[start:end]
        line.rstrip()
        lines.append(line)
        start = end
        while start < len(plain) and plain[start] == " ":
            start += 1
        room = max(width - indent, 1)
    if start < len(plain) or not lines:
        lines.append(text[start:])
    return [line if i == 0 else Text(" " * indent) + line for i, line in enumerate(lines)]
