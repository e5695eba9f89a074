"""The dashboard's script and style, served at ``/ui/assets/NAME`` to anyone (they hold
no fleet data; the login page needs them before there is a token).

The script, plain JavaScript for any current browser:

- live view: it long-polls ``GET /v1/events?after=ID`` (ID: the last it saw, first the
  one the page was rendered at) and, when events come, asks for the page's ``main`` again
  (``fragment=1``) and swaps it in, at most once every ``data-every`` ms (a unit's page
  1 s; a list 3 s, since each look asks up to 100 machines' agents for usage): the page
  follows the fleet without a reload, and what is shown is always the server's own
  rendering. Not while someone types in the page's filter: the swap waits for it to
  lose focus. A page that no longer is (its unit destroyed) says so; a token revoked
  meanwhile (401) brings the login page;
- actions: buttons call the API's own routes (``/v1/units/state``, ``/v1/units/restart``,
  ``/v1/machines/NAME/drain``...) with the ``X-Fleetd-Dashboard`` header that lets the
  cookie stand for a token on a write (cookie.py); those with ``data-confirm`` ask first;
- a unit page's log: ``GET /v1/units/NAME/journal?follow=1`` read as it streams, begun
  again a few seconds after it ends (the unit moved, its machine went away).
"""

from __future__ import annotations

from typing import Dict, Tuple

SCRIPT = r"""'use strict';
(function () {
  const HEADER = {'X-Fleetd-Dashboard': '1', 'Content-Type': 'application/json'};
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const $ = (id) => document.getElementById(id);
  function flash(text, bad) {
    const f = $('flash');
    f.textContent = text;
    f.className = bad ? 'bad' : 'ok';
  }
  let swapping = false, again = false, waiting = false;
  function typing() {  // a field of the page's main in use: swapping would wipe it
    const a = document.activeElement;
    return a !== null && a.matches('#live input') ? a : null;
  }
  async function refresh() {
    if (swapping) { again = true; return; }
    const field = typing();
    if (field) {
      if (!waiting) {
        waiting = true;
        field.addEventListener('blur', () => { waiting = false; refresh(); }, {once: true});
      }
      return;
    }
    swapping = true;
    try {
      const url = new URL(location.href);
      url.searchParams.set('fragment', '1');
      const r = await fetch(url, {credentials: 'same-origin'});
      if (r.ok) {
        $('live').innerHTML = await r.text();
      } else if (r.status === 401) {
        location.reload();  // the token was revoked: the login page
      } else {
        const answer = await r.json().catch(() => ({}));
        flash(answer.error || 'this page: ' + r.status, true);  // e.g. the unit is gone
      }
    } catch (e) { /* the next event tries again */ }
    await sleep(Number(document.body.dataset.every || 1000));
    swapping = false;
    if (again) { again = false; refresh(); }
  }
  async function follow() {
    const status = $('live-status');
    let after = document.body.dataset.after;
    if (after === '') { return; }  // a follower fleetd: no events here
    const unit = document.body.dataset.unit;
    let wait = '0';  // the first poll answers at once: the page says live when it is
    for (;;) {
      const q = new URLSearchParams({after: after, timeout: wait});
      if (unit) { q.set('unit', unit); }
      try {
        const r = await fetch('/v1/events?' + q, {credentials: 'same-origin'});
        if (r.status === 401) { location.reload(); return; }  // revoked: the login page
        if (!r.ok) { status.textContent = 'not live: ' + r.status; await sleep(3000); continue; }
        const page = await r.json();
        status.textContent = 'live';
        status.dataset.last = page.last;
        if (page.events.length || page.reset || page.missed) { refresh(); }
        after = String(page.last);
        wait = '25';
      } catch (e) {
        status.textContent = 'not live: fleetd unreachable';
        await sleep(3000);
      }
    }
  }
  const ROUTES = {
    start: (n) => ['/v1/units/state', {names: [n], desired: 'launched'}],
    stop: (n) => ['/v1/units/state', {names: [n], desired: 'loaded'}],
    restart: (n) => ['/v1/units/restart', {names: [n]}],
    drain: (n) => ['/v1/machines/' + encodeURIComponent(n) + '/drain', {}],
    undrain: (n) => ['/v1/machines/' + encodeURIComponent(n) + '/undrain', {}],
  };
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button.act');
    if (!b) { return; }
    ev.preventDefault();
    const name = b.dataset.name, action = b.dataset.action;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) { return; }
    const [path, body] = ROUTES[action](name);
    b.disabled = true;
    try {
      const r = await fetch(path, {method: 'POST', headers: HEADER, credentials: 'same-origin',
                                   body: JSON.stringify(body)});
      const answer = await r.json().catch(() => ({}));
      flash(r.ok ? action + ' ' + name + ': done' : action + ' ' + name + ': ' +
            (answer.error || r.status), !r.ok);
    } catch (e) {
      flash(action + ' ' + name + ': ' + e, true);
    }
    b.disabled = false;
    refresh();
  });
  async function logTail(pre) {
    const path = '/v1/units/' + encodeURIComponent(pre.dataset.unit) + '/journal';
    for (;;) {
      try {
        const r = await fetch(path + '?follow=1&lines=50', {credentials: 'same-origin'});
        if (r.ok && r.body) {
          pre.textContent = '';
          const reader = r.body.getReader(), text = new TextDecoder();
          for (;;) {
            const {value, done} = await reader.read();
            if (done) { break; }
            pre.textContent = (pre.textContent + text.decode(value, {stream: true}))
              .split('\n').slice(-500).join('\n');
            pre.scrollTop = pre.scrollHeight;
          }
        } else {
          const answer = await r.json().catch(() => ({}));
          pre.dataset.error = answer.error || String(r.status);
        }
      } catch (e) { pre.dataset.error = String(e); }
      await sleep(3000);
    }
  }
  const out = $('logout');
  if (out) {
    out.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await fetch('/ui/session/end', {method: 'POST', headers: HEADER,
                                      credentials: 'same-origin'});
      location.reload();
    });
  }
  const pre = $('log');
  if (pre) { logTail(pre); }
  follow();
})();
"""

LOGIN = r"""'use strict';
document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = document.getElementById('token').value.trim();
  const r = await fetch('/ui/session', {method: 'POST', credentials: 'same-origin',
                                        headers: {'Authorization': 'Bearer ' + token}});
  if (r.ok) { location.reload(); return; }
  const answer = await r.json().catch(() => ({}));
  document.getElementById('login-error').textContent = answer.error || String(r.status);
});
"""

STYLE = """body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { display: flex; gap: 1.5em; align-items: center; padding: .5em 1em;
  background: #24323f; color: #eee; }
header a { color: #eee; text-decoration: none; margin-right: 1em; }
.brand { font-weight: bold; } .who, .live { font-size: 90%; opacity: .8; }
.logout { margin-left: auto; }
main, body > h2, #log { margin: 0 1em; } main { display: block; padding-bottom: 1em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #ddd;
  vertical-align: top; }
.counts a { margin-right: .8em; } .counts a.on, .page-on { font-weight: bold; }
.state-up, .state-running { color: #17702a; }
.state-unreachable, .state-lost, .state-failed, .state-error { color: #b00020; }
#flash.ok { background: #e6f4ea; padding: .3em 1em; }
#flash.bad { background: #fce8e6; padding: .3em 1em; }
#log { background: #111; color: #ddd; padding: .5em; max-height: 30em; overflow: auto;
  white-space: pre-wrap; }
.login { max-width: 30em; margin: 4em auto; }
code { background: #f2f2f2; padding: 0 .2em; }
"""

ASSETS: Dict[str, Tuple[str, str]] = {
    "dashboard.js": ("application/javascript", SCRIPT),
    "login.js": ("application/javascript", LOGIN),
    "dashboard.css": ("text/css", STYLE),
}
