"""``fleetctl``: fleet's verbs against fleetd's HTTP API (and the local lab).

Unit arguments are files (their base name is the unit name) or names of units already
submitted, as with fleet. Errors go to stderr with a non-zero exit and say where the
problem is: ``file:line`` for unit files, the option for bad flags, the machine for
host trouble.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from fleetd import __version__
from fleetd.cli.commands import LazyGroup
from fleetd.cli.context import Ctx
from fleetd.cli.output import visible


class _VisibleError(click.ClickException):
    """A command's error as printed: through ``visible``, since errors quote what fleetd
    answered (a unit's text, a host's or an agent's words)."""

    def __init__(self, error: click.ClickException) -> None:
        super().__init__(visible(error.format_message(), lines=True))


class _Fleetctl(LazyGroup):
    """fleetctl's top group: its commands are loaded when run (fleetd.cli.commands), and
    every command's error is printed as a _VisibleError (usage errors, about the command
    line itself, keep click's usage hint)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError:
            raise
        except click.ClickException as exc:
            raise _VisibleError(exc) from None


_FILE = click.Path(exists=True, dir_okay=False)


@click.group(cls=_Fleetctl, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar="FLEETCTL_ENDPOINT", show_envvar=True,
              help="fleetd API: unix:///PATH (default unix:///run/fleetd/fleetd.sock), "
                   "https://HOST:PORT or http://127.0.0.1:PORT, or several, "
                   "comma-separated: each request goes to the first that answers, "
                   "starting from the last that did.")
@click.option("--token-file", envvar="FLEETCTL_TOKEN_FILE", show_envvar=True, type=_FILE,
              help="File holding the bearer token for a TCP endpoint (or FLEETCTL_TOKEN "
                   "in the environment).")
@click.option("--token", hidden=True,  # FLEETCTL_TOKEN: read by fleetd.client, no warning
              help="Deprecated: any user sees it in ps. Use --token-file or FLEETCTL_TOKEN.")
@click.option("--ca-file", envvar="FLEETCTL_CA_FILE", show_envvar=True, type=_FILE,
              help="https://: the CA that signed fleetd's certificate (default: the "
                   "system's CAs).")
@click.option("--cert-file", envvar="FLEETCTL_CERT_FILE", show_envvar=True, type=_FILE,
              help="https://: this client's certificate, where fleetd has api.client_ca.")
@click.option("--key-file", envvar="FLEETCTL_KEY_FILE", show_envvar=True, type=_FILE,
              help="https://: the private key of --cert-file.")
@click.option("--request-timeout", envvar="FLEETCTL_REQUEST_TIMEOUT", show_envvar=True,
              type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Give up on a request fleetd has not answered in this time (a wait, "
                   "such as a blocking start's, gets this beyond the time it asks fleetd "
                   "to wait). Default: each request's own bound, 60 s for most.")
@click.version_option(__version__, message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx: click.Context, endpoint: Optional[str], token: Optional[str],
        token_file: Optional[str], ca_file: Optional[str], cert_file: Optional[str],
        key_file: Optional[str], request_timeout: Optional[float]) -> None:
    """Run units across machines, fleet-style."""
    if token is not None:
        click.echo("Warning: --token shows the token to every user of this machine (ps); "
                   "use --token-file FILE or FLEETCTL_TOKEN", err=True)
    ctx.obj = make_ctx(endpoint, token, token_file, ca_file, cert_file, key_file,
                       request_timeout)


def make_ctx(endpoint: Optional[str], token: Optional[str], token_file: Optional[str],
             ca_file: Optional[str], cert_file: Optional[str], key_file: Optional[str],
             request_timeout: Optional[float]) -> Ctx:
    """The Ctx the global flags say (completion's too, fleetd.cli.completion): the
    token file's token before --token's; BadParameter for a token file without one."""
    if token_file is not None:
        token = read_token(token_file)
    tls = None
    if ca_file or cert_file or key_file:
        from fleetd.endpoints import TlsFiles

        tls = TlsFiles(ca_file, cert_file, key_file)
    return Ctx(endpoint, token, tls, request_timeout)


def read_token(path: str) -> str:
    """The token in ``path``: its first line, stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: {getattr(exc, 'strerror', None) or exc}",
                                 param_hint="--token-file") from None
    if not token:
        raise click.BadParameter(f"{path}: no token in its first line",
                                 param_hint="--token-file")
    return token


def main() -> None:
    sys.exit(cli())
