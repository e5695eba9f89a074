"""units() in a real nginx's upstream list (issue 18 §4), in the lab through the real
fleetctl: nginx (Debian's nginx-light) on h1 proxies to web@1 and web@2 as its template
reads them; a web instance's machine is cut off (its link down), the instance moves,
and nginx's unit is rendered again and restarted: its upstream list names the new
machine, not the lost one, and answers come from both instances again. With
OnPeersChange=reload the unit is reloaded instead (ExecReload= rewrites nginx.conf from
the new environment and runs ``nginx -s reload``): the nginx master keeps its pid."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from typing import Set

import pytest
from labkit import Fleet, Lab, wait_for

WEB = """\
[Service]
ExecStart=/bin/sh -c 'mkdir -p {dir}/%i && echo %i@{{{{ machine.name }}}} > {dir}/%i/who \
&& cd {dir}/%i && exec python3 -m http.server 8080 --bind {{{{ machine.address }}}}'

[X-Fleet]
Conflicts=web@*.service
Ports=8080
"""
LB = """\
[Service]
Environment="UPSTREAM={{% for w in units('web@*.service') %}}server {{{{ w.address }}}}:\
{{{{ w.port }}}} max_fails=0; {{% endfor %}}"
Environment=LISTEN={{{{ machine.address }}}}:8081
ExecStart=/bin/sh {dir}/lb.sh {dir}/nginx
{reload}
[X-Fleet]
MachineID=h1
Ports=8081
{on_change}
"""
RELOADS = {"restart": ("", ""),
           "reload": ("ExecReload=/bin/sh {dir}/lb.sh {dir}/nginx reload\n",
                      "OnPeersChange=reload")}
START_NGINX = """\
#!/bin/sh
d="$1"; mkdir -p "$d"
cat > "$d/nginx.conf" <<CONF
worker_processes 1;
pid $d/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  upstream web { $UPSTREAM }
  server { listen $LISTEN;
           location / { proxy_pass http://web; proxy_connect_timeout 1s; } }
}
CONF
if [ "$2" = reload ]; then
  exec nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log" -s reload
fi
exec nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log" -g "daemon off;"
"""


@pytest.mark.parametrize("on_change", sorted(RELOADS))
def test_nginx_upstreams_follow_a_web_instance_to_its_new_machine(
        cluster: Fleet, lab: Lab, tmp_path, on_change: str) -> None:
    address = {h.name: h.address for h in lab.hosts()}
    (tmp_path / "web@.service").write_text(WEB.format(dir=tmp_path))
    reload, option = RELOADS[on_change]
    (tmp_path / "lb.service").write_text(LB.format(dir=tmp_path, on_change=option,
                                                   reload=reload.format(dir=tmp_path)))
    (tmp_path / "lb.sh").write_text(START_NGINX)
    cluster.ctl("start", str(tmp_path / "web@1.service"), str(tmp_path / "web@2.service"))
    cluster.ctl("start", str(tmp_path / "lb.service"))
    placed = cluster.placed()
    conf = tmp_path / "nginx" / "nginx.conf"

    def upstreams() -> Set[str]:
        text = conf.read_text() if conf.exists() else ""
        return set(re.findall(r"server ([0-9.]+:[0-9]+)", text))

    def answers() -> Set[str]:
        seen = set()
        for _ in range(6):
            try:
                with urllib.request.urlopen(f"http://{address['h1']}:8081/who",
                                            timeout=3) as r:
                    seen.add(r.read().decode().strip())
            except OSError:
                pass
        return seen

    webs = {f"web@{i}.service": placed[f"web@{i}.service"] for i in (1, 2)}
    wait_for("nginx listing both", lambda: upstreams() == {
        f"{address[m]}:8080" for m in webs.values()})
    wait_for("answers from both", lambda: answers() == {
        f"{n[4]}@{m}" for n, m in webs.items()}, 20)
    lb_pid = cluster.unit("lb.service")["pid"]
    master = (tmp_path / "nginx" / "nginx.pid").read_text().strip()
    assert master == str(lb_pid)  # the unit's program is nginx's master

    moving = next(n for n, m in sorted(webs.items()) if m != "h1")
    staying = next(n for n in webs if n != moving)
    victim, stays = webs[moving], webs[staying]
    link = f"{cluster.host(victim).netns}-br"
    subprocess.run(["ip", "link", "set", link, "down"], check=True)
    try:
        to = wait_for(f"{moving} running elsewhere", lambda: (
            (m := cluster.placed().get(moving)) not in (None, victim) and (
                u := cluster.unit(moving)) and u["state"] == "running" and m), 30)
        wait_for("nginx listing its new machine", lambda: upstreams() == {
            f"{address[stays]}:8080", f"{address[to]}:8080"}, 20)
        if on_change == "reload":  # the same master, its workers on the new conf
            assert cluster.unit("lb.service")["pid"] == lb_pid
            assert (tmp_path / "nginx" / "nginx.pid").read_text().strip() == master
        else:
            assert cluster.unit("lb.service")["pid"] != lb_pid  # restarted on new content
        wait_for("answers from both again", lambda: answers() == {
            f"{moving[4]}@{to}", f"{staying[4]}@{stays}"}, 20)
        out = cluster.ctl("list-units", "--fields", "unit,address", "--no-legend").stdout
        assert f"{moving} {address[to]}:8080" in " ".join(out.split())
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
    wait_for(f"{victim} up again", lambda: cluster.machines()[victim]["state"] == "up", 30)
