"""fleetctl's API client is fleetd.client (the lab uses it too); this name stays for the
tests and work in progress that import it from here."""

from fleetd.client import DEFAULT_ENDPOINT, ApiError, Client

__all__ = ["DEFAULT_ENDPOINT", "ApiError", "Client"]
