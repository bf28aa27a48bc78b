"""Text for the XML that the query protocol (STS) and S3 answer with: characters XML 1.0 cannot carry
(control characters, lone surrogates) replaced, so that an error that repeats the client's own input
(an action name, a path, a header) still parses in the client."""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def xml_escape(text: str) -> str:
    """``text`` as XML character data: escaped, and :func:`xml_safe`."""
    return escape(xml_safe(text))
