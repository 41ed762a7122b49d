"""What the fake's HTML pages share: the page frame, the stylesheet, escaping and markdown.

The pages are for a person at a browser (the approval page, the operator's inbox). They need no
JavaScript and load nothing from elsewhere. Every value from an email is untrusted: plain text is
escaped, and markdown is rendered with raw HTML off and images off (so nothing can be injected
and nothing is fetched from a sender's server).
"""

from __future__ import annotations

import html
from datetime import datetime

from markdown_it import MarkdownIt

_MARKDOWN = MarkdownIt("js-default", {"html": False, "linkify": False}).disable("image")

STYLE = """
:root {
  --ink: #1d2330; --muted: #515a6b; --line: #d5dae3; --page: #f3f5f8; --card: #fff;
  --accent: #1a56b8; --ok: #17663a; --ok-soft: #eef8f1; --bad: #a8261b; --bad-soft: #fdf1ef;
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--page); color: var(--ink);
  font: 1rem/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif;
}
a { color: var(--accent); }
.bar { background: var(--ink); color: #fff; }
.bar .wrap { display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; align-items: baseline;
  justify-content: space-between; padding-block: .7rem; }
.brand { font-weight: 700; }
.links { display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; }
.bar a { color: #fff; text-decoration: none; padding: .15rem 0; }
.bar a:hover, .bar a[aria-current="page"] { text-decoration: underline;
  text-underline-offset: .3em; }
.wrap { max-width: 60rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: 1rem 0 .25rem; }
.lead { color: var(--muted); margin: 0 0 1.25rem; }
.notice { border-left: .3rem solid var(--ok); background: var(--ok-soft); padding: .75rem 1rem;
  margin: .75rem 0; border-radius: .25rem; }
.notice.error { border-color: var(--bad); background: var(--bad-soft); }
.empty { background: var(--card); border: 1px dashed var(--line); border-radius: .5rem;
  padding: 2rem 1.25rem; text-align: center; color: var(--muted); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: .5rem;
  padding: 1.25rem; margin: 0 0 1.5rem; box-shadow: 0 1px 2px rgb(0 0 0 / .04);
  overflow-wrap: anywhere; }
.kicker { margin: 0; font-size: .85rem; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.card h2 { font-size: 1.3rem; margin: .15rem 0 .75rem; line-height: 1.3; }
.meta { display: grid; gap: .2rem; margin: 0 0 1rem; font-size: .95rem; }
.meta > div { display: grid; grid-template-columns: 5.5rem 1fr; gap: 1rem; }
.meta dt { color: var(--muted); }
.meta dd { margin: 0; }
.mode { display: inline-block; font-family: ui-monospace, monospace; font-size: .85rem;
  background: #eef1f6; border: 1px solid var(--line); border-radius: .25rem; padding: 0 .35rem; }
.context { border: 1px solid var(--line); border-radius: .375rem; background: #f8f9fb;
  margin: 0 0 1rem; }
.context summary { cursor: pointer; padding: .6rem .9rem; color: var(--muted); }
.context .md { padding: 0 .9rem .6rem; border-top: 1px solid var(--line); }
.body { border-top: 1px solid var(--line); padding-top: .5rem; font-size: 1.05rem; }
.md { max-width: 100%; }
.md pre { overflow-x: auto; background: #f3f5f8; padding: .75rem; border-radius: .25rem; }
.md code { font-family: ui-monospace, monospace; font-size: .92em; }
.md blockquote { margin: 0; padding-left: 1rem; border-left: .25rem solid var(--line);
  color: var(--muted); }
.md table { display: block; overflow-x: auto; border-collapse: collapse; }
.md th, .md td { border: 1px solid var(--line); padding: .25rem .6rem; }
.attachments { font-size: .95rem; color: var(--muted); }
.decide { display: grid; grid-template-columns: repeat(auto-fit, minmax(15rem, 1fr));
  gap: 1rem; margin-top: 1.25rem; }
.decide form { margin: 0; }
.decide fieldset { height: 100%; margin: 0; border-radius: .375rem; padding: .75rem 1rem 1rem;
  display: flex; flex-direction: column; gap: .5rem; }
.decide legend { font-weight: 700; padding: 0 .35rem; }
.decide p { margin: 0; font-size: .95rem; }
.approve fieldset { border: 1px solid #9fcdb0; background: var(--ok-soft); }
.reject fieldset { border: 1px solid #e3aaa3; background: var(--bad-soft); }
label { font-size: .95rem; font-weight: 600; }
input[type="text"] { width: 100%; font: inherit; padding: .45rem .6rem; border: 1px solid #8a93a3;
  border-radius: .25rem; background: #fff; }
button { font: inherit; font-weight: 600; padding: .55rem 1rem; border-radius: .3rem;
  border: 1px solid transparent; color: #fff; cursor: pointer; align-self: flex-start;
  margin-top: auto; }
.approve button { background: var(--ok); }
.reject button { background: var(--bad); }
button:focus-visible, input:focus-visible, a:focus-visible, summary:focus-visible {
  outline: 3px solid #f2b70d; outline-offset: 2px; }
.code { font-size: 1.1rem; }
.code code { font-family: ui-monospace, monospace; font-size: 1.3rem; letter-spacing: .08em;
  background: #fff6d6; border: 1px solid #e8cf7a; border-radius: .25rem; padding: .1rem .5rem; }
.plain { white-space: pre-wrap; font: inherit; margin: 0; }
@media (max-width: 30rem) {
  .wrap { padding: .75rem; }
  .card { padding: 1rem .9rem; }
  .meta > div { grid-template-columns: 4.25rem 1fr; gap: .5rem; }
}
"""

NAV = (("/_fake/approvals", "Approvals"), ("/_fake/operator", "Operator inbox"))


def escape(value: object) -> str:
    """HTML-escape, replacing characters that cannot be encoded (e.g. lone surrogates)."""
    return html.escape(_encodable(str(value)), quote=True)


def markdown(text: str) -> str:
    """Render an email body: markdown to HTML with raw HTML shown as text."""
    rendered: str = _MARKDOWN.render(_encodable(text))
    return rendered


def when(timestamp: str | None) -> str:
    """An ISO 8601 UTC time as a `<time>` element a person can read, e.g. `25 Nov, 17:40 UTC`."""
    if not timestamp:
        return ""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return f'<time datetime="{escape(timestamp)}">{moment:%d %b %Y, %H:%M} UTC</time>'


def plural(count: int, one: str, many: str) -> str:
    """`1 email`, `2 emails`."""
    return f"{count} {one if count == 1 else many}"


def page(title: str, current: str, content: str, counts: dict[str, int]) -> str:
    """A whole HTML document: the bar with links to every page, then `content` in `<main>`."""
    links = []
    for href, label in NAV:
        mark = ' aria-current="page"' if href == current else ""
        count = f" ({counts[href]})" if href in counts else ""
        links.append(f'<a href="{href}"{mark}>{label}{count}</a>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} - fake MultiMail</title>
<style>{STYLE}</style>
</head>
<body>
<header class="bar"><nav class="wrap" aria-label="Fake MultiMail pages">
<span class="brand">Fake MultiMail</span>
<span class="links">{"".join(links)}</span>
</nav></header>
<main class="wrap">
{content}
</main>
</body>
</html>"""


def _encodable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
