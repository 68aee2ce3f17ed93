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
