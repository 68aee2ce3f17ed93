"""Domain errors of the member registry, each with a stable `code`."""

from ledger.errors import LedgerError


class MemberExists(LedgerError):
    code = "member-exists"


class InvalidMember(LedgerError):
    """A field of an enrolment or profile that cannot be accepted; names the field."""

    code = "invalid-member"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class MemberStillActive(LedgerError):
    """Personal data is erased from a closed account, never from an active one."""

    code = "member-still-active"


class InvalidPool(LedgerError):
    """A field of a pool request that cannot be accepted; names the field."""

    code = "invalid-pool"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class PoolNotFound(LedgerError):
    """No such pool, or the member is in no pool."""

    code = "pool-not-found"


class AlreadyInPool(LedgerError):
    """A member is in one pool at most."""

    code = "already-in-pool"


class PoolFull(LedgerError):
    """The pool has as many adults (or children) as it may."""

    code = "pool-full"


class PoolCoolOff(LedgerError):
    """A member who left a pool joins another only after the cool-off."""

    code = "pool-cool-off"


class PoolRedeemRefused(LedgerError):
    """Only an adult of the pool redeems its miles."""

    code = "pool-redeem-refused"


class InsufficientPooledPoints(LedgerError):
    code = "insufficient-pooled-points"
