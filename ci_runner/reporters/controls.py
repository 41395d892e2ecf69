"""Control characters in job output, made visible: the one rule every reporter applies to job lines. Pure.

Job output is untrusted. Printed raw, its control characters can change the CI log's structure or rewrite
text already shown: a GitLab section marker (`section_start:<ts>:<name>[collapsed=true]\\r\\e[0K`) opens a
collapsed section that hides what follows, a `section_end:` closes ci-runner's own section early;
erase-line/display (`\\e[2K`, `\\e[J`), cursor movement (`\\e[A`, `\\e[H`, `\\e7`/`\\e8`), backspace and a bare
carriage return overwrite earlier text; OSC sequences set window titles and hyperlinks whose target is
not their text. GitHub's `::stop-commands::` switches off workflow commands only, not these.

The rule, on GitHub, GitLab and plain/Jenkins logs alike, for each whole line of job output:

- SGR (`ESC [ digits;: m`: colour and style) is kept, so coloured output stays coloured;
- every other control character (Unicode category Cc) except TAB is shown as a visible picture:
  C0 controls as their Unicode control picture (ESC `␛`, CR `␍`, BS `␈`, BEL `␇`, ...), DEL as `␡`, and
  C1 controls (U+0080-U+009F, e.g. the 8-bit CSI U+009B) as `␛` and their 7-bit letter (`␛[`). The rest of
  an escape sequence is ordinary text after its ESC: `\\e[2K` is printed as `␛[2K`, an OSC 8 link as
  `␛]8;;https://…␇text␛]8;;␇`;
- the carriage returns that end the line (CRLF files) are removed and NUL bytes dropped: they are line
  ends and padding, not content.

Visible, not dropped: the log shows that the job tried something and what, nothing the job printed
disappears, and every other character stays exactly as printed. One picture character per control
rather than `^[` or `\\e`: those are two ordinary characters a job prints in regexes and caret
notation; no terminal or log viewer interprets `␛`. GitLab recognises a section marker only with the
`\\r\\e[0K` suffix right after the name (the leading `\\e[0K` is for terminals), and both of those
characters become pictures, so `section_start:` and `section_end:` in job output stay plain words.
Lines are whole (reporters buffer partial lines), so a sequence split across two output chunks is
neutralised like any other.
"""

from __future__ import annotations

import re

SGR = re.compile(r"\x1b\[([0-9;:]*)m")  # Select Graphic Rendition: colour and style, the group is its parameters
_SGR_OR_CONTROL = re.compile(SGR.pattern + r"|[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _pictures() -> dict[int, str]:
    """Control character → what the log shows instead (TAB is not in the table: it stays)."""
    table = {code: chr(0x2400 + code) for code in range(0x20) if code != 0x09}  # U+2400 block: ␀…␟
    table.update({code: "\u241b" + chr(code - 0x40) for code in range(0x80, 0xA0)})  # C1 = ESC + letter
    table[0x7F] = "\u2421"  # ␡
    table[0x00] = ""
    return table


_PICTURES = _pictures()


def neutralise(text: str) -> str:
    """`text` with every control character except TAB, outside SGR sequences, replaced by its picture
    (NUL dropped)."""
    if text.isprintable():
        return text  # no control character at all: the common case
    return _SGR_OR_CONTROL.sub(_picture, text)


def _picture(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) is not None else _PICTURES[ord(match.group(0))]


def log_line(line: str) -> str:
    """A whole line of job output as the CI log may show it: CRs of its line end removed, NUL dropped,
    every other control character made visible (see the module docstring); colour (SGR) kept."""
    return neutralise(line.rstrip("\r"))
