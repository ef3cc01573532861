"""``protsae trainer report``: a published run's Findings figures as a self-contained folder.

Reads the store (the same queries and figures as the server's Findings page, from
``app.findings``) and writes ``index.html`` with every figure inlined plus one ``{key}.svg`` per
figure. Feature links point at ``{base_url}/features/{id}``: a running explorer on that store.
"""

from __future__ import annotations

import html
from pathlib import Path

from sqlalchemy.orm import Session

from app.findings.render import FigureOut, render_findings
from app.queries import gather_findings, published_run_named
from app.store.engine import make_engine


def _figure_html(fig: FigureOut, base_url: str) -> str:
    links = "".join(
        f'<li><a href="{html.escape(base_url + link.url)}">{html.escape(link.label)}</a></li>'
        for link in fig.links
    )
    svg = fig.inline.replace('xlink:href="/', f'xlink:href="{html.escape(base_url)}/')
    return (
        f'<figure id="{fig.key}">{svg}<figcaption><strong>{html.escape(fig.title)}.</strong> '
        f'{html.escape(fig.caption)} <a href="{fig.key}.svg">SVG</a>'
        f"{f'<ul>{links}</ul>' if links else ''}</figcaption></figure>"
    )


def write_report(database_url: str, run_name: str, out: Path, base_url: str = "") -> Path:
    """Write the report of published run ``run_name`` into ``out``; return index.html's path."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            run = published_run_named(session, run_name)
            if run is None:
                raise LookupError(f"no published run named {run_name!r} in {database_url}")
            found = gather_findings(session, run.id)
            assert found is not None
            rendered = render_findings(found)
            title = f"Findings: {run.name}"
            meta = (
                f"model {run.base_model}, layer {run.layer}; corpus {run.corpus} "
                f"({run.n_proteins} proteins); dictionaries "
                + ", ".join(f"{s.name} ({s.kind})" for s in found.saes)
            )
    finally:
        engine.dispose()
    out.mkdir(parents=True, exist_ok=True)
    for fig in rendered.figures:
        (out / f"{fig.key}.svg").write_text(fig.svg)
    missing = "".join(f"<li>{html.escape(m)}</li>" for m in rendered.missing)
    body = "".join(_figure_html(f, base_url.rstrip("/")) for f in rendered.figures)
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>body{{font:15px/1.5 system-ui,sans-serif;"
        "max-width:1200px;margin:16px auto;padding:0 16px}figure{margin:24px 0;padding:12px;"
        "border:1px solid #d9dde3;border-radius:6px}svg{max-width:100%;height:auto}"
        "figcaption{color:#5b6470}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(meta)}</p>"
        f"{f'<p>Not shown, for lack of data:</p><ul>{missing}</ul>' if missing else ''}"
        f"{body}</body></html>"
    )
    index = out / "index.html"
    index.write_text(page)
    return index
