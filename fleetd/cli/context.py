"""The state every fleetctl command shares: how to reach fleetd, errors made readable."""

from __future__ import annotations

from typing import Any, Dict, Optional

import click

from fleetd.client import ApiError, Client, EndpointError
from fleetd.endpoints import TlsFiles


class Ctx:
    def __init__(self, endpoint: Optional[str], token: Optional[str],
                 tls: Optional[TlsFiles] = None) -> None:
        """``endpoint``: one or a comma-separated list (fleetd.client.parse_endpoints
        reads it; one it cannot read is a usage error naming the option, as is a TLS
        file that is no certificate or key)."""
        try:
            self.client = Client(endpoint, token, tls)
        except EndpointError as exc:
            raise click.BadParameter(str(exc), param_hint="'--endpoint' / FLEETCTL_ENDPOINT"
                                     ) from None

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: float = 60.0) -> Dict[str, Any]:
        """One API call; an API error becomes the command's error (all of them, when
        fleetd reports several, such as every invalid unit of a batch)."""
        try:
            return self.client.request(method, path, body, timeout=timeout)
        except ApiError as exc:
            errors = exc.body.get("errors")
            if isinstance(errors, list) and len(errors) > 1:
                raise click.ClickException("\n".join(str(e) for e in errors)) from None
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(Ctx)
