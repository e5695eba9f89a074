"""Shell completion for bash, zsh and fish: click's own (``_FLEETCTL_COMPLETE``), the
script printed by ``fleetctl completion SHELL``, and units' and machines' names asked
of fleetd as they are typed (issue 14).

A completion runs fleetctl once per Tab: it loads no command but the one being
completed (fleetd.cli.commands), and asks fleetd with a short bound, so a fleetd that
cannot be reached costs a second, never a hung shell; then nothing is offered.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, List

import click

if TYPE_CHECKING:  # at run time only when completing: list-units need not load it
    from click.shell_completion import CompletionItem

SHELLS = ("bash", "zsh", "fish")
ASK_S = 1.0  # the bound on fleetd's answer while the user waits at a Tab


def _ctx_of(ctx: click.Context) -> Any:
    """fleetctl's Ctx from the global flags on the command line so far (completion
    parses them but runs no group callback); a token file it cannot read is left out."""
    from fleetd.cli.main import make_ctx

    root = ctx.find_root().params

    def made(token_file: Any) -> Any:
        return make_ctx(root.get("endpoint"), root.get("token"), token_file,
                        root.get("ca_file"), root.get("cert_file"), root.get("key_file"),
                        ASK_S)

    try:
        return made(root.get("token_file"))
    except click.BadParameter:  # the token file's
        return made(None)


def _names(path: str, rows: str, key: str) -> Callable[[click.Context, str], List[str]]:
    def names(ctx: click.Context, incomplete: str) -> List[str]:
        try:
            answer = _ctx_of(ctx).call("GET", path, timeout=ASK_S)
        except click.ClickException:
            return []  # no fleetd, or it refused: nothing to offer
        return sorted(str(r[key]) for r in answer.get(rows) or []
                      if str(r[key]).startswith(incomplete))
    return names


unit_names = _names("/v1/unit-files", "unit_files", "unit")
machine_names = _names("/v1/machines", "machines", "name")


def complete_units(ctx: click.Context, param: click.Parameter, incomplete: str
                   ) -> List[CompletionItem]:
    """A UNIT argument: the submitted units' names."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in unit_names(ctx, incomplete)]


def complete_machines(ctx: click.Context, param: click.Parameter, incomplete: str
                      ) -> List[CompletionItem]:
    """A MACHINE argument: the machines' names."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(n) for n in machine_names(ctx, incomplete)]


def complete_targets(ctx: click.Context, param: click.Parameter, incomplete: str
                     ) -> List[CompletionItem]:
    """MACHINE|UNIT (``fleetctl ssh``): machines first, then units."""
    return [*complete_machines(ctx, param, incomplete),
            *complete_units(ctx, param, incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    bash (4.4 or later): ``eval "$(fleetctl completion bash)"`` in ~/.bashrc; zsh:
    ``eval "$(fleetctl completion zsh)"`` in ~/.zshrc; fish: ``fleetctl completion fish
    > ~/.config/fish/completions/fleetctl.fish``. The same as click's
    ``_FLEETCTL_COMPLETE=SHELL_source fleetctl``, byte for byte: click prints it, as it
    does for that variable (click before 8.5 ends it with one more newline)."""
    from click.shell_completion import shell_complete

    root = ctx.find_root()
    prog = root.info_name or "fleetctl"
    var = f"_{prog.replace('-', '_').replace('.', '_')}_COMPLETE".upper()
    shell_complete(root.command, {}, os.path.basename(prog), var, f"{shell}_source")
