"""The dashboard's pages as jinja2 templates (autoescaped: unit names, metadata and log
lines are the fleet's text, not HTML). Kept as strings in a module rather than files
beside it, so that they install with the package without a package-data entry.

Each page's ``<main id="live">`` is what the script swaps when an event comes (the page
asked again with ``fragment=1``, which renders ``main`` alone); what must not be swapped
(a unit's log, streaming) lives outside it.
"""

from __future__ import annotations

from typing import Dict

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% block title %}fleetd{% endblock %} - fleetd</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css">
<script src="/ui/assets/dashboard.js" defer></script></head>
<body data-after="{{ after if after is not none else '' }}" data-unit="{{ unit_glob or '' }}"
 data-every="{{ 1000 if unit_glob else 3000 }}">
<header><a class="brand" href="/ui/machines">fleetd</a>
<nav><a href="/ui/machines">Machines</a> <a href="/ui/units">Units</a></nav>
<span class="who">{{ caller.name }} ({{ caller.role }})</span>
<span id="live-status" class="live">{{ 'live' if after is not none
  else 'not live: this fleetd does not lead' }}</span>
<form id="logout" class="logout"><button type="submit">log out</button></form></header>
<div id="flash" role="status"></div>
<main id="live">{% block main %}{% endblock %}</main>
{% block after_main %}{% endblock %}
</body></html>
"""

MACROS = """{% macro counts(listing, base) -%}
<p class="counts"><a href="{{ base }}?{{ listing.query(state=None) | urlencode }}"
{%- if not listing.state %} class="on"{% endif %}>all {{ listing.counts.values() | sum }}</a>
{% for state, n in listing.counts.items() %}
 <a href="{{ base }}?{{ listing.query(state=state) | urlencode }}" data-state="{{ state }}"
{%- if listing.state == state %} class="on"{% endif %}>{{ state }} {{ n }}</a>{% endfor %}</p>
<form class="filter" method="get" action="{{ base }}">
{% if listing.state %}<input type="hidden" name="state" value="{{ listing.state }}">{% endif %}
{% if listing.machine %}<input type="hidden" name="machine" value="{{ listing.machine }}">
{% endif %}
<input name="q" value="{{ listing.glob or '' }}" placeholder="name or glob">
<button type="submit">filter</button></form>
{%- endmacro %}
{% macro pager(listing, base) -%}
{% set p = listing.page %}
<p class="pager">{{ p.total }} shown in {{ p.pages }} page{{ '' if p.pages == 1 else 's' }}
{% if p.pages > 1 %}: {% for n in page_links(p) %}
{% if n is none %}...{% elif n == p.number %}<b class="page-on">{{ n }}</b>{% else %}
<a href="{{ base }}?{{ listing.query(page=n) | urlencode }}">{{ n }}</a>{% endif %}
{% endfor %}{% endif %}</p>
{%- endmacro %}
{% macro action(kind, name, label, target, confirm='') -%}
<button class="act act-{{ label }}" data-kind="{{ kind }}" data-name="{{ name }}"
 data-action="{{ label }}"{% if confirm %} data-confirm="{{ confirm }}"{% endif %}>
{{- label }}</button>
{%- endmacro %}
"""

MACHINES = """{% extends "base.html" %}
{% block title %}Machines{% endblock %}
{% block main %}{% import "macros.html" as m %}<h1>Machines</h1>
{{ m.counts(listing, "/ui/machines") }}
<table class="machines"><thead><tr><th>machine</th><th>state</th><th>metadata</th>
<th>load</th><th>units</th>{% if operate %}<th></th>{% endif %}</tr></thead><tbody>
{% for v in views %}
<tr data-machine="{{ v.name }}" data-state="{{ v.state }}">
<td class="name">{{ v.name }}<br><small>{{ v.address }}</small></td>
<td class="state state-{{ v.state }}">{{ v.state }}{% if v.error %}<br><small>{{ v.error }}</small>
{% endif %}{% if v.draining %}<br><small class="drain">{{ v.draining }}</small>{% endif %}</td>
<td>{% for k, val in v.metadata %}<code>{{ k }}={{ val }}</code> {% endfor %}</td>
<td class="load">{{ v.load.units }} unit{{ '' if v.load.units == 1 else 's' }}<br>
<small>cpu {{ seconds(v.load.cpu_seconds) }}, mem {{ size(v.load.memory_bytes) }}</small></td>
<td class="units">{% for u, st in v.units %}<a href="/ui/units/{{ u | urlencode }}"
 data-unit="{{ u }}" data-state="{{ st }}">{{ u }}</a> <small>{{ st }}</small><br>{% endfor %}
{% if v.more_units %}<a href="/ui/units?machine={{ v.name | urlencode }}">
{{- "+%d more" % v.more_units }}</a>{% endif %}</td>
{% if operate %}<td>{% if v.draining %}{{ m.action("machine", v.name, "undrain", v.name) }}
{% else %}{{ m.action("machine", v.name, "drain", v.name,
 "Drain " ~ v.name ~ "? Its units move to other machines.") }}{% endif %}</td>{% endif %}</tr>
{% else %}<tr><td colspan="6">no machines{% if listing.state or listing.glob %} here
(<a href="/ui/machines">all</a>){% endif %}</td></tr>{% endfor %}</tbody></table>
{{ m.pager(listing, "/ui/machines") }}{% endblock %}
"""

UNITS = """{% extends "base.html" %}
{% block title %}Units{% endblock %}
{% block main %}{% import "macros.html" as m %}<h1>Units</h1>
{{ m.counts(listing, "/ui/units") }}
<table class="units"><thead><tr><th>unit</th><th>machine</th><th>state</th><th>desired</th>
<th>health</th><th>usage</th><th>why there</th>{% if operate %}<th></th>{% endif %}
</tr></thead><tbody>
{% for v in views %}
<tr data-unit="{{ v.unit }}" data-machine="{{ v.machine }}" data-state="{{ v.state }}">
<td class="name"><a href="/ui/units/{{ v.unit | urlencode }}">{{ v.unit }}</a></td>
<td class="machine">{{ v.machine }}</td>
<td class="state state-{{ v.state }}">{{ v.state }}{% if v.restarts %}
<small>({{ v.restarts }} restart{{ '' if v.restarts == 1 else 's' }})</small>{% endif %}</td>
<td>{{ v.desired }}</td><td>{{ v.health or '-' }}</td>
<td><small>cpu {{ seconds(v.cpu_seconds) }}<br>mem {{ size(v.memory_bytes) }}</small></td>
<td class="reason"><small>{{ v.reason or '-' }}</small></td>
{% if operate %}<td class="actions">{{ m.action("unit", v.unit, "start", v.unit) }}
{{ m.action("unit", v.unit, "stop", v.unit, "Stop " ~ v.unit ~ "?") }}
{{ m.action("unit", v.unit, "restart", v.unit, "Restart " ~ v.unit ~ "?") }}</td>{% endif %}</tr>
{% else %}<tr><td colspan="8">no units{% if listing.state or listing.glob %} here
(<a href="/ui/units">all</a>){% endif %}</td></tr>{% endfor %}</tbody></table>
{{ m.pager(listing, "/ui/units") }}{% endblock %}
"""

UNIT = """{% extends "base.html" %}
{% block title %}{{ s.unit }}{% endblock %}
{% block main %}{% import "macros.html" as m %}<h1 data-unit="{{ s.unit }}">{{ s.unit }}</h1>
<p>{{ s.description }}</p>
<dl class="facts"><dt>desired</dt><dd id="desired">{{ s.desired }}</dd>
<dt>machine</dt><dd id="machine">{{ s.machine or '-' }}</dd>
<dt>why there</dt><dd id="reason">{{ s.reason or '-' }}</dd></dl>
{% if operate %}<p class="actions">{{ m.action("unit", s.unit, "start", s.unit) }}
{{ m.action("unit", s.unit, "stop", s.unit, "Stop " ~ s.unit ~ "?") }}
{{ m.action("unit", s.unit, "restart", s.unit, "Restart " ~ s.unit ~ "?") }}</p>{% endif %}
<h2>Copies</h2><table class="copies"><thead><tr><th>machine</th><th>state</th><th>pid</th>
<th>restarts</th><th>last exit</th><th>health</th><th>usage</th></tr></thead><tbody>
{% for c in s.copies %}<tr data-machine="{{ c.machine }}" data-state="{{ c.state }}"
 data-pid="{{ c.pid or '' }}" data-restarts="{{ c.restarts or 0 }}">
<td>{{ c.machine }}</td><td class="state state-{{ c.state }}">{{ c.state }}</td>
<td class="pid">{{ c.pid or '-' }}</td><td class="restarts">{{ c.restarts or 0 }}</td>
<td>{{ c.exit_status if c.exit_status is not none else '-' }}</td><td>{{ c.health or '-' }}</td>
<td><small>cpu {{ seconds((c.usage or {}).get('cpu_seconds')) }},
mem {{ size((c.usage or {}).get('memory_bytes')) }}</small></td></tr>
{% else %}<tr><td colspan="7">no copy reported</td></tr>{% endfor %}</tbody></table>
<h2>Recent events</h2><ol class="events" reversed>
{% for e in events %}<li data-id="{{ e.id }}" data-kind="{{ e.kind }}">
<time>{{ clock(e.time) }}</time> <b>{{ e.kind }}</b>
{%- if e.machine %} on {{ e.machine }}{% endif %}:
{{ e.reason }}</li>{% else %}<li>none held{{ '' if after is not none
 else ' (events are the leading fleetd\\'s)' }}</li>{% endfor %}</ol>{% endblock %}
{% block after_main %}<h2>Log</h2><pre id="log" data-unit="{{ s.unit }}"></pre>{% endblock %}
"""

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>log in - fleetd</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css">
<script src="/ui/assets/login.js" defer></script></head>
<body><main class="login"><h1>fleetd</h1>
<p>{{ why }}</p>
<form id="login"><label>API token <input type="password" id="token" autocomplete="off"
 autofocus required></label> <button type="submit">log in</button></form>
<p id="login-error" role="alert"></p>
<p><small>A token of fleetctl token create (role read, or operate to start and stop
units). The browser keeps it as a cookie only fleetd reads.</small></p></main></body></html>
"""

ERROR = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ status }} - fleetd</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css"></head>
<body><header><a class="brand" href="/ui/machines">fleetd</a>
<nav><a href="/ui/machines">Machines</a> <a href="/ui/units">Units</a></nav></header>
<main class="error"><h1>{{ status }}</h1><p id="error">{{ message }}</p></main></body></html>
"""

TEMPLATES: Dict[str, str] = {"base.html": BASE, "macros.html": MACROS,
                             "machines.html": MACHINES, "units.html": UNITS,
                             "unit.html": UNIT, "login.html": LOGIN,
                             "error.html": ERROR}
