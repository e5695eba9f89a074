"""The web dashboard (issue 18): fleetd's machines, units and events in a browser, on
the API's own listener and behind the API's own access checks.

Server-rendered HTML (jinja2, already fleetd's) and one small script of plain
JavaScript: no npm, no build step, nothing vendored. The parts: ``pages.py`` (pure: rows
to view models, counts and paging), ``render.py`` (the templates, ``templates.py``;
the script and style, ``assets.py``), ``routes.py`` (the aiohttp handlers, reading the
services), ``cookie.py`` (what a browser can send instead of an Authorization header).
"""
