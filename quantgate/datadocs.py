"""Great Expectations Data Docs that render without internet access.

GX 1.x pages load Bootstrap, bootstrap-table, Font Awesome, jQuery and Vega from public CDNs, and its logo
from an S3 bucket of its own: offline they render unstyled, and the index page, whose table bootstrap-table
fills from JavaScript, renders empty. None of those libraries ships in a Python package here (GX's own
`render/view/static` holds only its images, fonts and its small stylesheet, which the site builder already
copies beside the pages), so rather than fetch them this rewrites each page: every CDN `<link>`/`<script>`
goes, GX's own stylesheets and images (from the `static/` folder the site builder wrote) are inlined into
the page (images as data URIs; its web fonts give way to the system's), a small stylesheet covering the
Bootstrap classes the pages use is added, and the index gets a plain list of its pages. Each page is then
one self-contained object: it renders styled when opened alone from a presigned link (whose relative URLs
would carry no signature), and a run stores one object per page, not twenty assets beside them.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

_CDN_TAG = re.compile(
    r"<link\b[^>]*\bhref=[\"']https?://[^\"']*[\"'][^>]*>"
    r"|<script\b[^>]*\bsrc=[\"']https?://[^\"']*[\"'][^>]*>\s*</script>",
    re.IGNORECASE,
)
_GX_ASSET = re.compile(
    r"https://great-expectations-web-assets\.s3[^\"')\s]*/([\w.-]+?)(?:\?[^\"')\s]*)?(?=[\"')\s])"
)
_CSS_URL = re.compile(r"url\([\"']?https?://[^)]*\)", re.IGNORECASE)
_STATIC_CSS = re.compile(
    r"<link\b[^>]*\bhref=[\"'](?:\./|\.\./)*static/([^\"']+\.css)[\"'][^>]*>", re.IGNORECASE
)
_STATIC_SRC = re.compile(r"\b(src|href)=[\"'](?:\./|\.\./)*static/([^\"']+)[\"']")
_ANY_CSS_URL = re.compile(r"url\((?![\"']?data:)[^)]*\)", re.IGNORECASE)
# Anything fetched by the page itself (not a link a person may click): src= and srcset= (also
# protocol-relative //host), CSS url() and @import, and any <link> but a plain hyperlink.
_FETCHED = re.compile(
    r"\b(?:src|srcset)=[\"']?\s*(?:https?:)?//"
    r"|url\([\"']?\s*(?:https?:)?//"
    r"|@import\s+(?:url\()?[\"']?\s*(?:https?:)?//"
    r"|<link\b[^>]*\bhref=[\"']?\s*(?:https?:)?//",
    re.IGNORECASE,
)

OFFLINE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#212529;
 background:#fff;line-height:1.45;font-size:14px}
.container,.container-fluid{padding:0 1rem;margin:0 auto}.row{display:flex;flex-wrap:wrap;gap:0 1rem}
[class*="col-"]{flex:1 1 0;min-width:0}.col-12{flex-basis:100%}
.d-none{display:none!important}
nav,.ge-navigation-sidebar-container{padding:.5rem 0}
.nav-link{color:#0b5cad;text-decoration:none}a{color:#0b5cad}
table,.table{border-collapse:collapse;margin:.5rem 0;max-width:100%}
.table td,.table th,td,th{border:1px solid #dee2e6;padding:.3rem .5rem;vertical-align:top;text-align:left}
th,thead td{background:#f1f3f5}
.badge{display:inline-block;padding:.1rem .4rem;border-radius:.25rem;font-size:85%;background:#e9ecef}
.alert{padding:.5rem .75rem;border:1px solid #dee2e6;border-radius:.25rem;background:#f8f9fa;margin:.5rem 0}
.card{border:1px solid #dee2e6;border-radius:.25rem;margin:.5rem 0;padding:.5rem}
.text-success{color:#198754}.text-danger{color:#b02a37}.text-muted{color:#6c757d}
.fas,.fa{font-style:normal}.fa-check-circle::before,.fa-check::before{content:"\\2714"}
.fa-times::before,.fa-times-circle::before,.fa-exclamation-triangle::before{content:"\\2718"}
.cooltip .top{display:none}.collapse:not(.show){display:block}
.quantgate-offline-index{margin:1rem}
"""


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _inline_static(page: str, static: Path | None) -> str:
    """GX's stylesheets become <style> blocks and its images data URIs; a reference to an asset that is
    not there is dropped (the page must not point at an object that was never stored)."""

    def inside(rel: str) -> Path | None:  # only a file of the site's own static folder is ever inlined
        if static is None:
            return None
        path = (static / rel).resolve()
        return path if path.is_relative_to(static.resolve()) and path.is_file() else None

    def css(m: re.Match[str]) -> str:
        path = inside(m.group(1))
        if path is None:
            return ""
        return f"<style>{_ANY_CSS_URL.sub('none', path.read_text(encoding='utf-8'))}</style>"

    def src(m: re.Match[str]) -> str:
        path = inside(m.group(2))
        if path is None:
            return f'{m.group(1)}="#"'
        return f'{m.group(1)}="{_data_uri(path)}"'

    return _STATIC_SRC.sub(src, _STATIC_CSS.sub(css, page))


def offline_page(page: str, rel: str, index_of: list[str] | None = None, static: Path | None = None) -> str:
    """One Data Docs page (`rel`: its path inside the site) rewritten to render offline, self-contained
    (`static`: the site's `static/` folder, whose assets are inlined). With `index_of` (the site's pages),
    a plain list of them is added: the index's own table needs JS."""
    page = _CDN_TAG.sub("", page)
    page = _CSS_URL.sub("none", page)  # GX's dark-mode logo (a CSS background) is not in its package
    page = _GX_ASSET.sub(lambda m: f"static/images/{m.group(1)}", page)
    page = _inline_static(page, static)
    style = f'<style id="quantgate-offline">{OFFLINE_CSS}</style>'
    page = page.replace("</head>", style + "</head>", 1) if "</head>" in page else style + page
    if index_of is not None:
        items = "".join(
            f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>' for p in index_of if p != rel
        )
        listing = f'<section class="quantgate-offline-index"><h3>Pages</h3><ul>{items}</ul></section>'
        page = page.replace("</body>", listing + "</body>", 1) if "</body>" in page else page + listing
    return page


def make_offline(docs_dir: Path, pages: list[str]) -> list[str]:
    """Rewrite the site's pages in place, each self-contained (see the module docstring); the files to
    store, relative to `docs_dir`: the pages only."""
    static = docs_dir / "static" if (docs_dir / "static").is_dir() else None
    for rel in pages:
        path = docs_dir / rel
        text = path.read_text(encoding="utf-8")
        path.write_text(
            offline_page(text, rel, pages if rel == "index.html" else None, static),
            encoding="utf-8",
        )
    return sorted(set(pages))


def fetched_urls(page: str) -> list[str]:
    """What in a page a browser would fetch from the internet by itself (for tests and checks)."""
    return [m.group(0) for m in _FETCHED.finditer(page)]


def main_page(pages: list[str]) -> str | None:
    """The page a person opens first: the validation result (it stands alone), else the index."""
    validations = sorted(p for p in pages if p.startswith("validations/"))
    if validations:
        return validations[-1]
    return "index.html" if "index.html" in pages else None
