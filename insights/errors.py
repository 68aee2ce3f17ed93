"""Domain errors of insights, each with a stable `code` (api/ maps codes to
HTTP statuses and RFC 9457 problem types). A bad period is finance's
`InvalidPeriod` (finance/errors.py); unknown members and partners are the
ledger's `MemberNotFound` / `PartnerNotFound`."""

from ledger.errors import LedgerError


class InvalidInsightParameter(LedgerError):
    """A query parameter outside what a figure accepts (a currency that is no
    ISO 4217 code, a limit out of range, ...). Names the parameter."""

    code = "invalid-query-parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)
