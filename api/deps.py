"""Dependency providers: the services the app built at start-up."""

from litestar import Request
from litestar.di import Provide

from ledger.service import LedgerService
from members.registry import Members
from partners.programme import Programme
from partners.registry import Registry
from partners.rulebook import Rulebook


def _ledger(request: Request) -> LedgerService:
    return request.app.state.ledger


def _rulebook(request: Request) -> Rulebook:
    return request.app.state.rulebook


def _programme(request: Request) -> Programme:
    return request.app.state.programme


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _members(request: Request) -> Members:
    return request.app.state.members


SERVICES = {
    "ledger": Provide(_ledger, sync_to_thread=False),
    "rules": Provide(_rulebook, sync_to_thread=False),
    "programme": Provide(_programme, sync_to_thread=False),
    "registry": Provide(_registry, sync_to_thread=False),
    "members": Provide(_members, sync_to_thread=False),
}
