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


# -- breakage (finance/breakage.py) --------------------------------------------------


class InvalidBreakageRate(LedgerError):
    """An expected redemption rate that is not a decimal in (0, 1] with at
    most 6 decimal places."""

    code = "invalid-breakage-rate"


class BreakageEstimateBackdated(LedgerError):
    """An estimate asked to start before it is recorded."""

    code = "breakage-estimate-backdated"


class InvalidTrailingMonths(LedgerError):
    code = "invalid-trailing-months"


# -- settlement statements (finance/settlement.py) ------------------------------------


class SettlementPeriodOpen(LedgerError):
    """The month is not over yet: a statement covers a whole month."""

    code = "settlement-period-open"


class SettlementExists(LedgerError):
    """The month is settled for the partner; reissue to recompute it."""

    code = "settlement-exists"


class SettlementOutOfOrder(LedgerError):
    """A month before the partner's last settled month: its entries are settled
    by the later statements already."""

    code = "settlement-out-of-order"


class StatementNotFound(LedgerError):
    code = "statement-not-found"


# -- partner file reconciliation (finance/reconciliation*.py) -------------------------


class InvalidReconciliationMapping(LedgerError):
    """A column mapping that cannot be used; names the field."""

    code = "invalid-reconciliation-mapping"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class ReconciliationFileInvalid(LedgerError):
    """The file does not match the partner's mapping (a mapped column is
    missing from its header, or it has no header): nothing is stored."""

    code = "reconciliation-file-invalid"


class ReconciliationNotFound(LedgerError):
    code = "reconciliation-not-found"


class InvalidReconciliationQuery(LedgerError):
    """A class, limit or cursor the reads do not accept (names the parameter)."""

    code = "invalid-query-parameter"
