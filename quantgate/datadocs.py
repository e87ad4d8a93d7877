"""Great Expectations Data Docs that render without internet access.

GX 1.x pages load Bootstrap, bootstrap-table, Font Awesome, jQuery and Vega from public CDNs, and its logo
from an S3 bucket of its own: offline they render unstyled, and the index page, whose table bootstrap-table
fills from JavaScript, renders empty. None of those libraries ships in a Python package here (GX's own
`render/view/static` holds only its images, fonts and its small stylesheet, which the site builder already
copies beside the pages), so rather than fetch them this rewrites each page: every CDN `<link>`/`<script>`
goes, GX's asset URLs become relative to the stored `static/` folder, a small stylesheet covering the
Bootstrap classes the pages use is inlined (so a page opened alone, from a presigned link whose relative
URLs carry no signature, is still styled), and the index gets a plain list of its pages.
"""

from __future__ import annotations

import html
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
_STATIC_REF = re.compile(r"\b(href|src)=[\"'](?:\./|\.\./)*static/")
_CSS_URL = re.compile(r"url\([\"']?https?://[^)]*\)", re.IGNORECASE)
# Anything fetched by the page itself (not a link a person may click): src=, CSS url(), stylesheet href=.
_FETCHED = re.compile(
    r"\bsrc=[\"']https?://|url\([\"']?https?://|<link\b[^>]*rel=[\"']?stylesheet[^>]*href=[\"']https?://",
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


def offline_page(page: str, rel: str, index_of: list[str] | None = None) -> str:
    """One Data Docs page (`rel`: its path inside the site) rewritten to render offline. With
    `index_of` (the site's pages), a plain list of them is added: the index's own table needs JS."""
    up = "../" * rel.count("/")
    page = _CDN_TAG.sub("", page)
    page = _CSS_URL.sub("none", page)  # GX's dark-mode logo (a CSS background) is not in its package
    page = _GX_ASSET.sub(lambda m: f"{up}static/images/{m.group(1)}", page)
    # GX 1.24 writes one "../" too few on validation pages (four folders deep): count them from `rel`.
    page = _STATIC_REF.sub(lambda m: f'{m.group(1)}="{up}static/', page)
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
    """Rewrite the site's pages in place (see the module docstring); every file to store, relative to
    `docs_dir`: the pages and GX's static assets (stylesheets, images, fonts) beside them."""
    for rel in pages:
        path = docs_dir / rel
        text = path.read_text(encoding="utf-8")
        path.write_text(offline_page(text, rel, pages if rel == "index.html" else None), encoding="utf-8")
    for css in (docs_dir / "static").rglob("*.css"):
        css.write_text(_CSS_URL.sub("none", css.read_text(encoding="utf-8")), encoding="utf-8")
    assets = sorted(str(p.relative_to(docs_dir)) for p in (docs_dir / "static").rglob("*") if p.is_file())
    return sorted(set(pages)) + assets


def fetched_urls(page: str) -> list[str]:
    """What in a page a browser would fetch from the internet by itself (for tests and checks)."""
    return [m.group(0) for m in _FETCHED.finditer(page)]


def main_page(pages: list[str]) -> str | None:
    """The page a person opens first: the validation result (it stands alone), else the index."""
    validations = sorted(p for p in pages if p.startswith("validations/"))
    if validations:
        return validations[-1]
    return "index.html" if "index.html" in pages else None
