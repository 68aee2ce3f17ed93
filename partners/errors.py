"""Domain errors of programme rules and partners, each with a stable `code`."""

from ledger.errors import LedgerError, PartnerNotFound  # noqa: F401 (raised by both)


class InvalidRule(LedgerError):
    """A rule, promotion, coupon or tier that cannot be accepted; names the field."""

    code = "invalid-rule"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class UnknownCategory(InvalidRule):
    code = "unknown-category"


class OverlappingExclusivePromotion(InvalidRule):
    code = "overlapping-exclusive-promotion"


class NoRuleInForce(LedgerError):
    code = "no-rule-in-force"


class UnknownCurrency(LedgerError):
    code = "unknown-currency"


class CurrencyMismatch(LedgerError):
    code = "currency-mismatch"


class CouponNotFound(LedgerError):
    code = "coupon-not-found"


class CouponNotUsable(LedgerError):
    code = "coupon-not-usable"


class RuleNotFound(LedgerError):
    code = "rule-not-found"


class InvalidPurchase(LedgerError):
    code = "invalid-purchase"


class PartnerSuspended(LedgerError):
    code = "partner-suspended"


class TooManyKeys(LedgerError):
    code = "too-many-keys"


class KeyNotFound(LedgerError):
    code = "key-not-found"


class CardNotFound(LedgerError):
    code = "card-not-found"


class CardBlocked(LedgerError):
    code = "card-blocked"


class ReturnExceedsPurchase(LedgerError):
    code = "return-exceeds-purchase"


class PurchaseNotFound(LedgerError):
    code = "purchase-not-found"


class PurchaseTimeOutsideWindow(LedgerError):
    """A purchase time the partner's contract does not accept: too far back
    (the late-submission window) or too far ahead of the server's clock."""

    code = "purchase-time-outside-window"


class CreditLimitExceeded(LedgerError):
    """An earning that would take the partner's outstanding points liability
    beyond its credit limit (plus deposit)."""

    code = "credit-limit-exceeded"


class InvalidReward(LedgerError):
    """A catalogue item that cannot be accepted; names the field."""

    code = "invalid-reward"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class RewardNotFound(LedgerError):
    code = "reward-not-found"


class RewardExists(LedgerError):
    code = "reward-exists"


class RewardOutOfStock(LedgerError):
    code = "reward-out-of-stock"


class RewardOrderNotFound(LedgerError):
    code = "reward-order-not-found"


class RewardOrderNotOpen(LedgerError):
    """The order was shipped or cancelled already: it changes no more."""

    code = "reward-order-not-open"


class InvalidClaim(LedgerError):
    """A missing-points claim that cannot be accepted; names the field."""

    code = "invalid-claim"

    def __init__(self, field: str, detail: str, **extensions: object) -> None:
        super().__init__(f"{field}: {detail}", field=field, **extensions)


class ClaimOutsideWindow(LedgerError):
    """A purchase older than the claim window."""

    code = "claim-outside-window"


class ClaimExists(LedgerError):
    """An open claim for the same receipt of the partner."""

    code = "claim-exists"


class ClaimNotFound(LedgerError):
    code = "claim-not-found"


class ClaimNotOpen(LedgerError):
    """The claim was confirmed, settled by the partner's send, or rejected."""

    code = "claim-not-open"
