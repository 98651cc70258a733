"""Admission: a bound on running plus queued requests, so that overload is refused, not queued
without end. Past the bound a request gets 429 with `Retry-After`; nothing admitted is dropped.
`budgeted` holds the other authenticated routes against the caller's own key budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends

from loramux.server.auth import Principal, User
from loramux.server.errors import Overloaded
from loramux.server.gateway_metrics import RequestStates, Ticket
from loramux.server.metrics import Metrics


class Admission:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.count = 0
        self._metrics = metrics
        self.states = RequestStates()  # where each admitted request is, for the gateway

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Hold one of `limit` places for the body of the `async with`; raise Overloaded if none.
        The ticket says where the request is (see `gateway_metrics`)."""
        if self.count >= self.limit:
            raise Overloaded(f"server is at its limit of {self.limit} running and queued "
                             "requests; retry shortly", retry_after=1)
        self.count += 1
        self._metrics.in_flight.set(self.count)
        try:
            with self.states.admitted() as ticket:
                yield ticket
        finally:
            self.count -= 1
            self._metrics.in_flight.set(self.count)


async def budgeted(principal: User) -> AsyncIterator[Principal]:
    """Dependency for the routes that are not completions (`/v1/models`, the admin and `/ui`
    routes, `/metrics`): the request is held against the key's concurrency and requests per
    minute like a completion, so no authenticated route is free to flood. Completions admit
    themselves (in `Handlers`), after the server's own bound."""
    with principal.admit():
        yield principal


Budgeted = Annotated[Principal, Depends(budgeted)]
