"""Domain errors of finance, each with a stable `code` (api/ maps codes to
HTTP statuses and RFC 9457 problem types)."""

from ledger.errors import LedgerError


class InvalidPeriod(LedgerError):
    """A period or instant that cannot be used: unparseable, empty, reversed,
    or longer than the bound. Names the parameter."""

    code = "invalid-period"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class InvalidExportFormat(LedgerError):
    code = "invalid-export-format"


class ExportIncomplete(LedgerError):
    """The rows streamed do not add up to the database's control totals of the
    same snapshot: the export is refused rather than handed out incomplete."""

    code = "export-incomplete"


class ExportsBusy(LedgerError):
    """Every connection set aside for streamed exports is in use: retry later
    (the API answers 503 with Retry-After, from the `retry_after` extension)."""

    code = "exports-busy"


class PeriodAlreadyClosed(LedgerError):
    """The month ends at or before the boundary: it is closed already."""

    code = "period-already-closed"


class PeriodNotOver(LedgerError):
    """The month has not ended yet by the database's clock."""

    code = "period-not-over"


class PeriodNotNext(LedgerError):
    """Months close in order: the next one to close is `next_period`."""

    code = "period-not-next"


class PeriodNotClosed(LedgerError):
    """No close of that month was recorded."""

    code = "period-not-closed"
