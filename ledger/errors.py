"""Domain errors of the ledger, each with a stable `code` (the API maps codes to
HTTP statuses and RFC 9457 problem types)."""


class LedgerError(Exception):
    code = "ledger-error"

    def __init__(self, detail: str, **extensions: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class InvalidAccount(LedgerError):
    code = "invalid-account"


class InvalidAmount(LedgerError):
    code = "invalid-amount"


class UnbalancedEntry(LedgerError):
    code = "unbalanced-entry"


class ReasonRequired(LedgerError):
    code = "reason-required"


class InsufficientPoints(LedgerError):
    code = "insufficient-points"


class EntryNotFound(LedgerError):
    code = "entry-not-found"


class NotReversible(LedgerError):
    code = "not-reversible"


class ReversalExceedsOriginal(LedgerError):
    code = "reversal-exceeds-original"


class HoldNotFound(LedgerError):
    code = "hold-not-found"


class HoldNotOpen(LedgerError):
    code = "hold-not-open"


class HoldExpired(LedgerError):
    code = "hold-expired"


class CaptureExceedsHold(LedgerError):
    code = "capture-exceeds-hold"


class DuplicatePartnerReference(LedgerError):
    code = "duplicate-partner-reference"

    @classmethod
    def of(cls, partner_id: str | None, reference: str | None) -> "DuplicatePartnerReference":
        """A partner's reference used before (they are unique for ever)."""
        return cls(
            f"partner {partner_id} already used reference {reference!r}",
            partner_reference=reference,
        )


class InvalidIdempotencyKey(LedgerError):
    code = "invalid-idempotency-key"


class IdempotencyKeyReused(LedgerError):
    """Same idempotency key, different request."""

    code = "idempotency-key-reused"


class SameMember(LedgerError):
    code = "same-member"


class InvalidCursor(LedgerError):
    code = "invalid-cursor"


class TransferRefused(LedgerError):
    """Below the minimum, or over the daily limit."""

    code = "transfer-refused"


class RequestInFlight(LedgerError):
    """Same idempotency key, while the first request is still running."""

    code = "request-in-flight"


class MemberNotFound(LedgerError):
    """The id names no enrolled member."""

    code = "member-not-found"


class MemberNotActive(LedgerError):
    """The member was closed or merged into another: its accounts take no postings."""

    code = "member-not-active"


class MemberAccountsNotSettled(LedgerError):
    """A member's accounts cannot be closed or merged as they stand: open
    holds, a debt, or (when closing without forfeiting) points left."""

    code = "member-accounts-not-settled"


class PartnerNotFound(LedgerError):
    """The id names no registered partner."""

    code = "partner-not-found"


class LockOrderError(RuntimeError):
    """A programming error, not a domain error: a transaction asked for a
    member's lock after it had locked others (see ledger/journal.py)."""


class AsOfRefused(LedgerError):
    """A job run as of an instant that would date entries before ones already
    posted (ledger/jobs.py)."""

    code = "as-of-refused"


class PeriodClosed(LedgerError):
    """An entry dated or booked before the end of a closed month (the
    database's period-close triggers, SQLSTATE LF422): the books are closed
    through `closed_through`; corrections go into the open period."""

    code = "period-closed"

    def __init__(self, detail: str, closed_through: str) -> None:
        super().__init__(detail, closed_through=closed_through)


class InvalidEffectiveTime(LedgerError):
    """A caller's effective time that cannot be used (e.g. in the future)."""

    code = "invalid-effective-time"
