"""Text that came from an agent, made safe to show: data, never markup, never terminal control.

Agents are untrusted (DESIGN §7), and so is every string they send: result messages, progress notes,
gRPC error details, hostnames, runtime names. Shown raw, such a string could carry terminal escape
sequences (colours, cursor movement, `ESC[2J`, OSC 8 hyperlinks, OSC 52 clipboard writes), characters that
move the cursor or ring the bell (CR overwrites the line, backspace erases, BEL), bidirectional overrides
that make a reader see other text than is there (U+202E), or rich markup (`[/x]` makes rich raise,
`[link=...]` adds a link). This module is the one place that decides what is safe:

- `clean` replaces every C0 control except newline and tab, DEL, every C1 control and the bidi
  controls with a visible escape (`\\x1b`, `\\u202e`): the output contains none of them, and the reader
  still sees that something odd was sent;
- `one_line` also folds line breaks, so a table cell stays one line, and bounds the length;
- `text` wraps the result in a rich `Text`, which rich never parses as markup.

Every terminal output of agent strings (`run` summary and live progress, `fleet list/show`, `runs`, the
`report` renderers, error messages) goes through these.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

#: C0 controls but \t and \n, DEL, C1 controls; the Unicode bidi controls (embeddings, overrides,
#: isolates, and the marks LRM, RLM, ALM) that reorder how the surrounding text is displayed.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Line breaks a single-line cell folds into a space (CR LF first, so it becomes one space).
_BREAKS = re.compile("\r\n|[\n\t\u2028\u2029]")
ELLIPSIS = "…"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: object, limit: int | None = None) -> str:
    """`text` as a string without terminal controls or bidi controls (each shown as a visible escape);
    newlines and tabs are kept. At most `limit` characters (cut with an ellipsis) when a limit is given."""
    s = str(text)
    if limit is None:
        return UNSAFE.sub(_escape, s.replace("\r\n", "\n"))
    # Cut before escaping too, so a huge string costs no more than `limit` characters of work.
    cut = len(s) > limit
    s = UNSAFE.sub(_escape, s[: limit + 1].replace("\r\n", "\n"))
    if cut or len(s) > limit:
        s = s[: max(0, limit - 1)] + ELLIPSIS
    return s


def one_line(text: object, limit: int | None = None) -> str:
    """`clean`, with line breaks and tabs as spaces: one table cell, one line."""
    s = str(text)
    if limit is not None:
        s = s[: limit + 2]  # enough for `clean` to see that it was longer (a CR LF folds to one space)
    return clean(_BREAKS.sub(" ", s), limit)


def text(value: object, style: str = "", limit: int | None = None) -> Text:
    """A rich `Text` of `one_line(value)`: shown literally (brackets included), whatever it contains."""
    from rich.text import Text

    return Text(one_line(value, limit), style=style)
