"""Domain errors of clubs and the service module, each with a stable `code`."""

from ledger.errors import LedgerError


class InvalidClub(LedgerError):
    """A club or a fee that cannot be accepted; names the field."""

    code = "invalid-club"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class ClubNotFound(LedgerError):
    code = "club-not-found"


class ClubExists(LedgerError):
    code = "club-exists"


class MembershipNotFound(LedgerError):
    code = "club-membership-not-found"


class MembershipExists(LedgerError):
    code = "club-membership-exists"


class MembershipCancelled(LedgerError):
    code = "club-membership-cancelled"


class RenewalTooEarly(LedgerError):
    code = "club-renewal-too-early"


class FeeMismatch(LedgerError):
    code = "club-fee-mismatch"


class PaymentReferenceReused(LedgerError):
    code = "club-payment-reference-reused"


class InvalidServiceInput(LedgerError):
    """A service plan, product or visit that cannot be accepted; names the field."""

    code = "invalid-service-input"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class ServicePlanNotFound(LedgerError):
    code = "service-plan-not-found"


class ProductNotFound(LedgerError):
    code = "product-not-found"


class ProductRegistered(LedgerError):
    code = "product-registered"


class DealerNotAuthorised(LedgerError):
    code = "dealer-not-authorised"


class ServiceVisitExists(LedgerError):
    code = "service-visit-exists"
