"""User=, Group= and LimitNOFILE=: who a program runs as and what it may open.

Resolved on the host at every start (the user database is the host's, and may change
while the agent runs), the way systemd resolves them (systemd.exec(5)):

- User= and Group= take a name or a number; either must exist in the host's user or
  group database (systemd refuses a numeric id it cannot look up, status 217/USER, and
  so does fleetd). Group= defaults to the user's primary group.
- Supplementary groups are the user's groups from the group database (initgroups);
  they are looked up here, in the agent, because the lookup (NSS) is not safe in the
  forked child of a process with threads.
- With User=, $USER and $LOGNAME are the user's name, $HOME its home and $SHELL its
  shell, as systemd 252 sets them: no $HOME for a home of "/", no $SHELL for a shell
  that means no login (nologin, false); Environment= and EnvironmentFile= may override
  them.
- LimitNOFILE= "infinity" is the kernel's ceiling (fs.nr_open): setrlimit refuses
  RLIM_INFINITY for open files, and systemd also settles on the closest allowed value.

The switch happens in the child between fork and exec (``preexec``), after it joined
the unit's cgroup and set its rlimit, both of which need root: Popen's own user=/group=
switch runs before preexec_fn, so it cannot be used.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import resource
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from fleetd.drivers.base import DriverError

NR_OPEN = "/proc/sys/fs/nr_open"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What the program switches to; ``user`` is None when only Group= was given."""

    uid: int
    gid: int
    groups: Tuple[int, ...]
    user: Optional[str] = None
    home: Optional[str] = None  # None: no $HOME (see clean_home)
    shell: Optional[str] = None  # None: no $SHELL (see clean_shell)

    def environment(self) -> Dict[str, str]:
        if self.user is None:
            return {}
        env = {"USER": self.user, "LOGNAME": self.user}
        if self.home is not None:
            env["HOME"] = self.home
        if self.shell is not None:
            env["SHELL"] = self.shell
        return env


# systemd's is_nologin_shell (src/basic/user-util.c): shells that mean "no login"
NOLOGIN_SHELLS = ("/bin/nologin", "/sbin/nologin", "/usr/bin/nologin", "/usr/sbin/nologin",
                  "/bin/false", "/usr/bin/false", "/bin/true", "/usr/bin/true")


def clean_home(home: str) -> Optional[str]:
    """The user's home as $HOME, as systemd's get_user_creds(USER_CREDS_CLEAN) keeps it:
    none for an empty, relative or root ("/") home."""
    return None if not home.startswith("/") or home.strip("/") == "" else home


def clean_shell(shell: str) -> Optional[str]:
    """The user's shell as $SHELL, as systemd keeps it: none for an empty or relative
    one, or one that means no login (daemon's /usr/sbin/nologin)."""
    return None if not shell.startswith("/") or shell in NOLOGIN_SHELLS else shell


def _user(value: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except (KeyError, OverflowError):
        raise DriverError(f"User={value}: no such user on this host") from None


def _group(value: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(value)) if value.isdigit() else grp.getgrnam(value)
    except (KeyError, OverflowError):
        raise DriverError(f"Group={value}: no such group on this host") from None


def resolve(user: Optional[str], group: Optional[str]) -> Optional[Credentials]:
    """The credentials for User=/Group=, or None if the unit sets neither."""
    if not user and not group:
        return None
    if user:
        pw = _user(user)
        gid = _group(group).gr_gid if group else pw.pw_gid
        try:
            groups = os.getgrouplist(pw.pw_name, gid)
        except OSError as exc:
            raise DriverError(f"User={user}: cannot read its groups: {exc}") from None
        return Credentials(uid=pw.pw_uid, gid=gid, groups=tuple(groups), user=pw.pw_name,
                           home=clean_home(pw.pw_dir), shell=clean_shell(pw.pw_shell))
    assert group
    gid = _group(group).gr_gid
    return Credentials(uid=os.geteuid(), gid=gid, groups=(gid,))


def nofile(value: Optional[Sequence[Optional[int]]]) -> Optional[Tuple[int, int]]:
    """LimitNOFILE= ([soft, hard], None meaning infinity) as setrlimit's pair."""
    if not value:
        return None
    ceiling = _nr_open()
    soft, hard = (ceiling if v is None else min(int(v), ceiling) for v in value)
    return min(soft, hard), hard


def _nr_open() -> int:
    try:
        with open(NR_OPEN) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def preexec(steps: List[Callable[[], None]], rlimit: Optional[Tuple[int, int]],
            creds: Optional[Credentials], umask: Optional[int] = None) -> Callable[[], None]:
    """One preexec_fn: ``steps`` (joining the cgroup), then the rlimit and ``umask``
    (UMask=; None leaves the caller's), then the switch to ``creds`` - groups, then gid,
    then uid, the only order that works (after setuid there is no privilege left to
    change groups)."""
    groups = list(creds.groups) if creds else []

    def run() -> None:
        for step in steps:
            step()
        if rlimit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, rlimit)
        if umask is not None:
            os.umask(umask)
        if creds is not None:
            os.setgroups(groups)
            os.setresgid(creds.gid, creds.gid, creds.gid)
            os.setresuid(creds.uid, creds.uid, creds.uid)

    return run
