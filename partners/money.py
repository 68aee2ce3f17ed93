"""Currencies (ISO 4217 minor-unit exponents) and explicit rounding of points."""

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from partners.errors import UnknownCurrency

# ISO 4217 exponents of the currencies partners settle in.
MINOR_UNIT_EXPONENTS = {
    "EUR": 2,
    "USD": 2,
    "GBP": 2,
    "CHF": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "RON": 2,
    "BGN": 2,
    "TRY": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SGD": 2,
    "HKD": 2,
    "CNY": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "ZAR": 2,
    "AED": 2,
    "JPY": 0,
    "KRW": 0,
    "ISK": 0,
    "KWD": 3,
    "BHD": 3,
}

ROUNDINGS = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceiling": ROUND_CEILING}


def check_currency(currency: str) -> str:
    if currency not in MINOR_UNIT_EXPONENTS:
        raise UnknownCurrency(f"unknown or unsupported currency {currency!r}", currency=currency)
    return currency


def units(amount_minor: int, currency: str) -> Decimal:
    """Minor units (cents) as a Decimal of major units (euros)."""
    return Decimal(amount_minor).scaleb(-MINOR_UNIT_EXPONENTS[check_currency(currency)])


def to_minor(amount_units: Decimal, currency: str, rounding: str = "floor") -> int:
    exponent = MINOR_UNIT_EXPONENTS[check_currency(currency)]
    return int(amount_units.scaleb(exponent).to_integral_value(ROUNDINGS[rounding]))


def round_points(value: Decimal, rounding: str = "floor") -> int:
    return int(value.to_integral_value(ROUNDINGS[rounding]))
