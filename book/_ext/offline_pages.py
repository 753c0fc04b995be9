"""Keep the built pages offline and quiet in the console.

Jupyter Book v1 always loads sphinx-thebe, which inlines its config (pointing at a CDN) twice per
page, so the browser reports "THEBE_JS_URL has already been declared". This book is static and
has no live-code buttons, so thebe's scripts and stylesheet are dropped from every page.
"""

from __future__ import annotations


def _is_thebe(asset) -> bool:
    name = getattr(asset, "filename", None) or ""
    body = (getattr(asset, "attributes", None) or {}).get("body", "")
    return "thebe" in str(name) or "THEBE_JS_URL" in body


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [a for a in context[key] if not _is_thebe(a)]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
