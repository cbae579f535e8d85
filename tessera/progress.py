"""Progress of a long CLI operation (defragment, snapshot save and restore): one line on stderr,
rewritten in place while the operation runs and erased when it ends.

Shown only on a terminal: in a pipe, a log or a test the line would only be
noise, so there nothing is written. Results that must stay (what was done, the
sizes) are the command's own output on stdout, printed whatever stderr is.

    with Progress() as progress:
        for position, item in enumerate(items, start=1):
            progress.count(position, len(items), f"defragmenting {item}")
            ...
            progress.bytes(done, total, "saving snapshot")
"""

from __future__ import annotations

import sys
from typing import TextIO

ERASE_LINE = "\r\x1b[K"  # back to the line's start, clear to its end


def size_text(size: float) -> str:
    """Bytes as people read them: 512 B, 1.5 kB, 23.4 MB (powers of 1000, as etcdctl prints sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


class Progress:
    """One transient status line; `enabled` defaults to whether `stream` is a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.clear()

    def show(self, text: str) -> None:
        """Replace the line with `text`."""
        if not self.enabled:
            return
        self.stream.write(ERASE_LINE + text)
        self.stream.flush()
        self._shown = True

    def count(self, done: int, total: int, text: str) -> None:
        """`[done/total] text`: which step of how many."""
        self.show(f"[{done}/{total}] {text}")

    def bytes(self, done: int, total: int | None, text: str) -> None:
        """`text: 12.0 MB of 48.0 MB (25%)`, or without the total when it is not known."""
        if total:
            self.show(f"{text}: {size_text(done)} of {size_text(total)} ({100 * done // total}%)")
        else:
            self.show(f"{text}: {size_text(done)}")

    def clear(self) -> None:
        """Erase the line, so that what is printed next starts on a clean one."""
        if self._shown:
            self.stream.write(ERASE_LINE)
            self.stream.flush()
            self._shown = False
