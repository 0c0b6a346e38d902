"""MkDocs hooks (local code, nothing downloaded): tidy reST idioms of the docstrings in the rendered API reference.

The docstrings are Google style with a few Sphinx habits that Markdown leaves as text: roles such as
``:class:`~clear_integrations.budgeting.Decision``` (rendered ``:class:<code>~...Decision</code>``) and a paragraph
ending in ``::`` before a literal block. Show them as the code name alone (the last dotted part when the target
starts with ``~``, as Sphinx does) and a single colon.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~)?([^<]*)</code>")
_LITERAL = re.compile(r"::</p>")


def _name(match: re.Match[str]) -> str:
    target = match[2]
    return f"<code>{target.rsplit('.', 1)[-1] if match[1] else target}</code>"


def on_page_content(html: str, **_kwargs: Any) -> str:
    """Rewrite Sphinx roles and ``::`` paragraph ends in a page's HTML."""
    return _LITERAL.sub(":</p>", _ROLE.sub(_name, html))
