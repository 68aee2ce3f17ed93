"""Enrol, find, close, merge and erase members.

Every operation is one transaction. Lock order (see ledger/journal.py): the
members' registry rows (`FOR NO KEY UPDATE`, which does not block the foreign
key checks of concurrent postings), then what the ledger's settlement locks
(the members' pending earnings, then the members themselves), then the
programme's rows of those members.

Personal data is kept to what running an account needs: an optional display
name and e-mail address. Erasure (GDPR art. 17) removes both from a closed
account; the member's id, a pseudonym, stays in the journal, whose entries
are never changed, and in the member's event log, which records who did
what but never personal data.
"""

import re
import secrets
from datetime import datetime
from typing import Literal

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import check_id
from ledger.errors import InvalidCursor, MemberNotActive, MemberNotFound, SameMember
from ledger.service import LedgerService
from members.errors import InvalidMember, MemberExists, MemberStillActive
from partners.programme import Programme

STATUSES = ("active", "closed", "merged")
MAX_PAGE = 200
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_COLUMNS = (
    "id, status, enrolled_at, enrolled_by, closed_at, merged_into, display_name, email, erased_at"
)


class MemberInput(msgspec.Struct, forbid_unknown_fields=True):
    """An enrolment. Without an id, the registry assigns a member number."""

    id: str | None = None
    display_name: str | None = None
    email: str | None = None


class ProfileInput(msgspec.Struct, forbid_unknown_fields=True):
    """The profile as it should be (a field left out or null is cleared)."""

    display_name: str | None = None
    email: str | None = None


class CloseInput(msgspec.Struct, forbid_unknown_fields=True):
    reason: str
    # What happens to points left: refuse the close, or forfeit them to
    # program:expired (with a journal entry).
    balance: Literal["refuse", "forfeit"] = "refuse"


class MergeInput(msgspec.Struct, forbid_unknown_fields=True):
    into: str
    reason: str


class MemberView(msgspec.Struct, frozen=True):
    id: str
    status: str
    enrolled_at: datetime
    enrolled_by: str
    closed_at: datetime | None
    merged_into: str | None
    display_name: str | None
    email: str | None
    erased_at: datetime | None


class MemberPage(msgspec.Struct, frozen=True):
    members: list[MemberView]
    next_cursor: str | None


class MemberEvent(msgspec.Struct, frozen=True):
    id: int
    event: str
    actor: str
    at: datetime
    entry_id: int | None
    detail: dict


class Closure(msgspec.Struct, frozen=True):
    member: MemberView
    forfeit_entry_id: int | None


class Merger(msgspec.Struct, frozen=True):
    source: MemberView
    target: MemberView
    entry_ids: list[int]
    moved: dict


def _view(row) -> MemberView:
    return MemberView(**{f: getattr(row, f) for f in MemberView.__struct_fields__})


def _profile(display_name: str | None, email: str | None) -> dict[str, str | None]:
    if display_name is not None:
        display_name = display_name.strip()
        if not 1 <= len(display_name) <= 200 or not display_name.isprintable():
            raise InvalidMember("display_name", "1 to 200 printable characters")
    if email is not None:
        email = email.strip()
        if len(email) > 254 or not _EMAIL.match(email):
            raise InvalidMember("email", "not an e-mail address")
    return {"display_name": display_name, "email": email}


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        raise InvalidMember("reason", "1 to 500 characters")
    return reason


class Members:
    def __init__(self, ledger: LedgerService, programme: Programme) -> None:
        self.ledger = ledger
        self.programme = programme
        self.engine = ledger.engine

    # -- reads ----------------------------------------------------------------

    async def member(self, member_id: str) -> MemberView:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM members WHERE id = :id"), {"id": member_id}
                )
            ).first()
        if row is None:
            raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
        return _view(row)

    async def search(
        self,
        *,
        prefix: str | None = None,
        card: str | None = None,
        email: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> MemberPage:
        """Members in id order, filtered by id prefix, card number, e-mail
        address (exact, any case) or status; `after` is the last id of the
        previous page."""
        if status is not None and status not in STATUSES:
            raise InvalidMember("status", f"one of {', '.join(STATUSES)}")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidMember("limit", f"1 to {MAX_PAGE}")
        if after is not None and not 1 <= len(after) <= 64:
            raise InvalidCursor("the cursor is the last member id of the previous page")
        where, params = ["TRUE"], {"limit": limit + 1}
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("m.id LIKE :prefix")
            params["prefix"] = escaped + "%"
        if card:
            where.append("m.id IN (SELECT member_id FROM cards WHERE card_number = :card)")
            params["card"] = card
        if email:
            where.append("lower(m.email) = lower(:email)")
            params["email"] = email.strip()
        if status:
            where.append("m.status = :status")
            params["status"] = status
        if after:
            where.append("m.id > :after")
            params["after"] = after
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT {_COLUMNS} FROM members m WHERE {' AND '.join(where)} "
                        'ORDER BY m.id COLLATE "C" LIMIT :limit'
                    ),
                    params,
                )
            ).all()
        page = [_view(r) for r in rows[:limit]]
        return MemberPage(page, page[-1].id if len(rows) > limit else None)

    async def events(self, member_id: str) -> list[MemberEvent]:
        await self.member(member_id)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, event, actor, at, entry_id, detail FROM member_events "
                    "WHERE member_id = :m ORDER BY id"
                ),
                {"m": member_id},
            )
            return [MemberEvent(r.id, r.event, r.actor, r.at, r.entry_id, r.detail) for r in rows]

    # -- changes --------------------------------------------------------------

    async def enrol(self, data: MemberInput, actor: str) -> MemberView:
        profile = _profile(data.display_name, data.email)
        if data.id is not None:
            check_id("member", data.id)

        async def body(conn: AsyncConnection) -> MemberView:
            member_id = data.id or f"M{secrets.randbelow(10**11):011d}"
            row = (
                await conn.execute(
                    text(
                        "INSERT INTO members (id, enrolled_by, display_name, email) "
                        "VALUES (:id, :actor, :display_name, :email) "
                        f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}"
                    ),
                    {"id": member_id, "actor": actor, **profile},
                )
            ).first()
            if row is None:
                if data.id is None:  # a generated number collided: draw again
                    return await body(conn)
                raise MemberExists(f"member {member_id!r} is already enrolled", member_id=member_id)
            await _event(conn, member_id, "enrolled", actor)
            return _view(row)

        return await self.ledger.atomically(body)

    async def update_profile(self, member_id: str, data: ProfileInput, actor: str) -> MemberView:
        profile = _profile(data.display_name, data.email)

        async def body(conn: AsyncConnection) -> MemberView:
            (before,) = await _lock(conn, [member_id], active=True)
            row = (
                await conn.execute(
                    text(
                        "UPDATE members SET display_name = :display_name, email = :email "
                        f"WHERE id = :id RETURNING {_COLUMNS}"
                    ),
                    {"id": member_id, **profile},
                )
            ).one()
            changed = [f for f in profile if getattr(before, f) != profile[f]]
            if changed:  # which fields, never their values
                await _event(conn, member_id, "profile-changed", actor, fields=changed)
            return _view(row)

        return await self.ledger.atomically(body)

    async def close(self, member_id: str, data: CloseInput, actor: str) -> Closure:
        """Close an account: points left are forfeited (one `forfeit` entry)
        or the close is refused, as `data.balance` says; open holds and debts
        always refuse it. Status and cards go with the account."""
        reason = _reason(data.reason)

        async def body(conn: AsyncConnection) -> Closure:
            await _lock(conn, [member_id], active=True)
            entry_id = await self.ledger.forfeit_in(
                conn, member_id, actor, f"account closed: {reason}", data.balance == "forfeit"
            )
            now = self.ledger.clock()
            await self.programme.close_member_in(conn, member_id, now, entry_id)
            row = await _set_status(conn, member_id, "closed", now)
            await _event(
                conn, member_id, "closed", actor, entry_id, reason=reason, balance=data.balance
            )
            return Closure(_view(row), entry_id)

        return await self.ledger.atomically(body)

    async def merge(self, source: str, data: MergeInput, actor: str) -> Merger:
        """Merge two accounts of one person: everything `source` holds moves
        to `data.into` (points lot by lot with their expiry, pending points,
        QP, the higher tier, cards, unused coupons, purchases still
        returnable), then `source` is closed as merged. Audited on both."""
        reason = _reason(data.reason)
        target = data.into
        check_id("member", target)
        if source == target:
            raise SameMember("a member cannot be merged into itself")

        async def body(conn: AsyncConnection) -> Merger:
            await _lock(conn, [source, target], active=True)
            entry_ids = await self.ledger.merge_in(
                conn, source, target, actor, f"merge of {source} into {target}: {reason}"
            )
            now = self.ledger.clock()
            first = entry_ids[0] if entry_ids else None
            moved = await self.programme.merge_members_in(conn, source, target, now, first)
            source_row = await _set_status(conn, source, "merged", now, merged_into=target)
            detail = {"reason": reason, "entries": entry_ids, "moved": moved}
            await _event(conn, source, "merged-into", actor, first, into=target, **detail)
            await _event(conn, target, "merged-from", actor, first, source=source, **detail)
            target_row = (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM members WHERE id = :id"), {"id": target}
                )
            ).one()
            return Merger(_view(source_row), _view(target_row), entry_ids, moved)

        return await self.ledger.atomically(body)

    async def erase(self, member_id: str, actor: str) -> MemberView:
        """Erase the personal data of a closed (or merged) account. The
        journal keeps the pseudonymous id; nothing else about the person stays."""

        async def body(conn: AsyncConnection) -> MemberView:
            (row,) = await _lock(conn, [member_id], active=False)
            if row.status == "active":
                raise MemberStillActive(
                    f"member {member_id} is active; close the account before erasing its data",
                    member_id=member_id,
                )
            erased = (
                await conn.execute(
                    text(
                        "UPDATE members SET display_name = NULL, email = NULL, "
                        "erased_at = coalesce(erased_at, :now) "
                        f"WHERE id = :id RETURNING {_COLUMNS}"
                    ),
                    {"id": member_id, "now": self.ledger.clock()},
                )
            ).one()
            if row.erased_at is None:
                await _event(conn, member_id, "erased", actor)
            return _view(erased)

        return await self.ledger.atomically(body)


async def _lock(conn: AsyncConnection, member_ids: list[str], *, active: bool) -> list:
    """Lock the members' registry rows in id order; each must exist (and be
    active when `active`). Returns the rows in the order asked."""
    rows = (
        await conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM members WHERE id = ANY(:ids) "
                'ORDER BY id COLLATE "C" FOR NO KEY UPDATE'
            ),
            {"ids": member_ids},
        )
    ).all()
    by_id = {r.id: r for r in rows}
    for member_id in member_ids:
        row = by_id.get(member_id)
        if row is None:
            raise MemberNotFound(f"no enrolled member {member_id!r}", member_id=member_id)
        if active and row.status != "active":
            raise MemberNotActive(
                f"member {member_id!r} is {row.status}",
                member_id=member_id,
                member_status=row.status,
            )
    return [by_id[m] for m in member_ids]


async def _set_status(conn, member_id: str, status: str, at, merged_into: str | None = None):
    return (
        await conn.execute(
            text(
                "UPDATE members SET status = :status, closed_at = :at, merged_into = :into "
                f"WHERE id = :id RETURNING {_COLUMNS}"
            ),
            {"status": status, "at": at, "into": merged_into, "id": member_id},
        )
    ).one()


async def _event(conn, member_id: str, event: str, actor: str, entry_id=None, **detail) -> None:
    await conn.execute(
        text(
            "INSERT INTO member_events (member_id, event, actor, entry_id, detail) "
            "VALUES (:m, :event, :actor, :entry, CAST(:detail AS jsonb))"
        ),
        {
            "m": member_id,
            "event": event,
            "actor": actor,
            "entry": entry_id,
            "detail": msgspec.json.encode(detail).decode(),
        },
    )
