"""The state every fleetctl command shares: how to reach fleetd, errors made readable.

The client is made when a command first calls fleetd, not before: ``--help``,
``version``, ``help`` and completion never pay for the HTTP and TLS modules (issue 14).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

import click

if TYPE_CHECKING:
    from fleetd.client import Client
    from fleetd.endpoints import TlsFiles

ENDPOINT_HINT = "'--endpoint' / FLEETCTL_ENDPOINT"


class Ctx:
    def __init__(self, endpoint: Optional[str], token: Optional[str],
                 tls: Optional[TlsFiles] = None,
                 request_timeout: Optional[float] = None) -> None:
        """``endpoint``: one or a comma-separated list (fleetd.client.parse_endpoints
        reads it; one it cannot read is a usage error naming the option, as is a TLS
        file that is no certificate or key). ``request_timeout``: --request-timeout
        (fleetd.client.Client says what it bounds)."""
        self.endpoint = endpoint
        self.token = token
        self.tls = tls
        self.request_timeout = request_timeout
        self._client: Optional[Client] = None

    @property
    def client(self) -> Client:
        if self._client is None:
            from fleetd.client import Client, EndpointError

            try:
                self._client = Client(self.endpoint, self.token, self.tls,
                                      request_timeout=self.request_timeout)
            except EndpointError as exc:
                raise click.BadParameter(str(exc), param_hint=ENDPOINT_HINT) from None
        return self._client

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: float = 60.0) -> Dict[str, Any]:
        """One API call; an API error becomes the command's error (all of them, when
        fleetd reports several, such as every invalid unit of a batch)."""
        from fleetd.client import ApiError

        client = self.client
        try:
            return client.request(method, path, body, timeout=timeout)
        except ApiError as exc:
            errors = exc.body.get("errors")
            if isinstance(errors, list) and len(errors) > 1:
                raise click.ClickException("\n".join(str(e) for e in errors)) from None
            raise click.ClickException(str(exc)) from None


pass_ctx = click.make_pass_decorator(Ctx)
