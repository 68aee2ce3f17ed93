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
