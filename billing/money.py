"""Money arithmetic: the one place where voltguard rounds.

Money is an integer number of minor units plus an ISO 4217 currency; rates and prices are
:class:`~decimal.Decimal`. Every function here converts its inputs to exact rationals
(:class:`fractions.Fraction`, exact for any finite ``Decimal``), so nothing is lost to a
``decimal`` context's precision, and then rounds exactly once.

Rounding policy
---------------
*Mode*: ``ROUND_HALF_UP`` in :mod:`decimal` terms, i.e. ties go away from zero (0.125 EUR is
13 cents, -0.125 EUR is -13). It is commercial rounding, what invoices, payment providers and
the OCPI 2.2.1 worked examples use: the complex tariff example bills 14.125 EUR as 14.13, where
banker's rounding (``ROUND_HALF_EVEN``) would give 14.12 and truncation would leak revenue on
every session.

*Where* (see :func:`billing.rating.rate_session`):

1. A bill line's volume is quantized to :data:`VOLUME_DECIMALS` decimals (kWh or hours),
   :func:`quantize_volume`.
2. Its amount excl. VAT is ``volume x unit price`` rounded once to the minor unit,
   :func:`line_net_minor`; an analyst reproduces it exactly from the printed line.
3. VAT is *not* rounded per line: the bill's VAT is the exact sum of every line's
   ``net x rate``, rounded once, then distributed over the lines by largest remainder
   (:func:`allocate_vat_minor`). Each line's VAT is within one minor unit of its exact
   value and the lines add up to the total exactly. This is what reproduces the OCPI
   examples (complex tariff, Monday: 10.00 EUR incl. VAT, not the 10.01 that per-line
   rounding of 0.375 + 0.50 + 0.375 would give).
4. A minimum/maximum price (incl. VAT) is split into net and VAT totals with
   :func:`split_gross_minor`; the adjustment line is the difference to the bill's totals.

Examples
--------
>>> from decimal import Decimal
>>> to_minor(Decimal("14.125"), "EUR"), to_minor(Decimal("-0.125"), "EUR")
(1413, -13)
>>> to_minor(Decimal("1499.5"), "JPY"), to_minor(Decimal("1.2345"), "KWD")
(1500, 1235)
>>> from_minor(1413, "EUR")
Decimal('14.13')
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from math import floor
from types import MappingProxyType
from typing import Final

from billing.exceptions import BillingError, UnknownCurrencyError

__all__ = [
    "MINOR_UNIT_EXPONENTS",
    "ROUNDING",
    "VOLUME_DECIMALS",
    "allocate_vat_minor",
    "from_minor",
    "line_net_minor",
    "minor_exponent",
    "quantize_pct",
    "quantize_volume",
    "split_gross_minor",
    "to_minor",
]

ROUNDING: Final = ROUND_HALF_UP
"""The rounding mode, as a :mod:`decimal` constant (ties away from zero)."""

VOLUME_DECIMALS: Final = 6
"""Decimals of a bill line's volume: 1 mWh for kWh, 3.6 ms for hours."""

_PCT_DECIMALS: Final = 2
_CTX: Final = Context(prec=80, rounding=ROUND_HALF_UP)

_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)

MINOR_UNIT_EXPONENTS: Final = MappingProxyType(
    {
        code: exponent
        for codes, exponent in (
            (_EXPONENT_0, 0),
            (_EXPONENT_2, 2),
            (_EXPONENT_3, 3),
            (_EXPONENT_4, 4),
        )
        for code in codes.split()
    }
)
"""ISO 4217 minor-unit exponent per active currency code (read-only).

Codes without a minor unit (precious metals, testing codes such as XAU, XTS, XXX) are absent
on purpose: money in them cannot be expressed in minor units.
"""


def minor_exponent(currency: str) -> int:
    """Return the ISO 4217 minor-unit exponent of ``currency`` (EUR 2, JPY 0, KWD 3).

    Raises
    ------
    UnknownCurrencyError
        ``currency`` is not an active ISO 4217 code with a minor unit (codes are upper case).

    Examples
    --------
    >>> minor_exponent("EUR"), minor_exponent("JPY"), minor_exponent("BHD")
    (2, 0, 3)
    """
    try:
        return MINOR_UNIT_EXPONENTS[currency]
    except (KeyError, TypeError):
        raise UnknownCurrencyError(str(currency)) from None


def _round_half_up(value: Fraction) -> int:
    """Round an exact rational to an integer, ties away from zero: THE rounding step."""
    magnitude = floor(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def _exact(value: Decimal | Fraction | int, name: str) -> Fraction:
    if isinstance(value, Decimal) and not value.is_finite():
        raise BillingError(f"{name} must be a finite number, got {value}")
    return Fraction(value)


def to_minor(amount: Decimal, currency: str) -> int:
    """Round an amount in major units (12.345 EUR) to integer minor units (1235), half up.

    Parameters
    ----------
    amount
        Any finite ``Decimal``, in the currency's major unit.
    currency
        ISO 4217 code; its exponent decides the minor unit.

    Raises
    ------
    UnknownCurrencyError
        Unknown currency.
    BillingError
        ``amount`` is NaN or infinite.

    Examples
    --------
    >>> to_minor(Decimal("0.005"), "EUR"), to_minor(Decimal("0.00499"), "EUR")
    (1, 0)
    """
    return _round_half_up(_exact(amount, "amount") * 10 ** minor_exponent(currency))


def from_minor(amount_minor: int, currency: str) -> Decimal:
    """Return integer minor units as an exact ``Decimal`` in major units (1413 -> 14.13).

    Examples
    --------
    >>> from_minor(5, "EUR"), from_minor(5, "JPY"), from_minor(-5, "KWD")
    (Decimal('0.05'), Decimal('5'), Decimal('-0.005'))
    """
    return Decimal(int(amount_minor)).scaleb(-minor_exponent(currency), _CTX)


def quantize_volume(value: Decimal | Fraction) -> Decimal:
    """Quantize a bill line's volume (kWh or hours) to :data:`VOLUME_DECIMALS`, half up.

    Examples
    --------
    >>> quantize_volume(Fraction(1, 6))  # 10 minutes in hours
    Decimal('0.166667')
    """
    scaled = _round_half_up(_exact(value, "volume") * 10**VOLUME_DECIMALS)
    return Decimal(scaled).scaleb(-VOLUME_DECIMALS, _CTX)


def quantize_pct(value: Decimal | Fraction) -> Decimal:
    """Quantize a percentage (e.g. an effective VAT rate) to two decimals, half up.

    Examples
    --------
    >>> quantize_pct(Fraction(135, 13))
    Decimal('10.38')
    """
    scaled = _round_half_up(_exact(value, "percentage") * 10**_PCT_DECIMALS)
    return Decimal(scaled).scaleb(-_PCT_DECIMALS, _CTX)


def line_net_minor(volume: Decimal, unit_price: Decimal, currency: str) -> int:
    """Amount excl. VAT of a bill line: ``volume x unit_price`` rounded once, half up.

    Examples
    --------
    >>> line_net_minor(Decimal("0.166667"), Decimal("2.40"), "EUR")  # 0.4000008 EUR
    40
    """
    exact = _exact(volume, "volume") * _exact(unit_price, "unit_price")
    return _round_half_up(exact * 10 ** minor_exponent(currency))


def allocate_vat_minor(net_minor: Sequence[int], vat_pct: Sequence[Decimal]) -> tuple[int, ...]:
    """VAT per line such that the lines add up to the rounded exact VAT of the whole bill.

    The bill's VAT is ``round_half_up(sum(net_i * pct_i / 100))``, rounded once. Each line
    gets the floor of its exact VAT, and the units still missing go to the lines with the
    largest fractional remainders (earlier lines first on ties): the largest-remainder
    method. Each line ends within one minor unit of its exact VAT.

    Parameters
    ----------
    net_minor
        Each line's amount excl. VAT, in minor units.
    vat_pct
        Each line's VAT percentage (0 when no VAT applies).

    Examples
    --------
    >>> allocate_vat_minor([250, 250, 375], [Decimal(15), Decimal(20), Decimal(10)])
    (38, 50, 37)
    """
    try:
        pairs = list(zip(net_minor, vat_pct, strict=True))
    except ValueError:
        raise BillingError("net_minor and vat_pct must have the same length") from None
    exact = [Fraction(int(n)) * _exact(p, "vat_pct") / 100 for n, p in pairs]
    shares = [floor(x) for x in exact]
    missing = _round_half_up(sum(exact, Fraction(0))) - sum(shares)
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[:missing]:
        shares[i] += 1
    return tuple(shares)


def split_gross_minor(gross_minor: int, vat_pct: Decimal) -> tuple[int, int]:
    """Split an amount incl. VAT into ``(net, vat)`` minor units at ``vat_pct`` percent.

    The net part is ``gross / (1 + pct/100)`` rounded once, half up; VAT is the remainder,
    so ``net + vat == gross`` exactly and both have the sign of ``gross``.

    Examples
    --------
    >>> split_gross_minor(27, Decimal(10)), split_gross_minor(-335, Decimal("10.38"))
    ((25, 2), (-303, -32))
    """
    pct = _exact(vat_pct, "vat_pct")
    if pct < 0:
        raise BillingError(f"vat_pct must be >= 0, got {vat_pct}")
    net = _round_half_up(Fraction(int(gross_minor)) * 100 / (100 + pct))
    return net, int(gross_minor) - net
