"""billing.money: minor-unit exponents and the one rounding rule (half up, ties away from 0)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import money
from billing.exceptions import BillingError, UnknownCurrencyError

CURRENCIES = sorted(money.MINOR_UNIT_EXPONENTS)
amounts = st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False)
percentages = st.decimals(min_value=0, max_value=50, places=2, allow_nan=False)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("EUR", 2), ("USD", 2), ("GBP", 2), ("NOK", 2), ("SEK", 2), ("DKK", 2), ("CHF", 2),
        ("PLN", 2), ("JPY", 0), ("KRW", 0), ("ISK", 0), ("CLP", 0), ("BHD", 3), ("KWD", 3),
        ("TND", 3), ("CLF", 4),
    ],
)  # fmt: skip
def test_minor_exponent(currency: str, exponent: int) -> None:
    assert money.minor_exponent(currency) == exponent


@pytest.mark.parametrize("currency", ["XAU", "XXX", "eur", "EURO", "", "HRK"])
def test_unknown_currency(currency: str) -> None:
    with pytest.raises(UnknownCurrencyError, match="unknown ISO 4217 currency") as info:
        money.to_minor(Decimal(1), currency)
    assert info.value.currency == currency
    assert isinstance(info.value, BillingError)


def test_exponent_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        money.MINOR_UNIT_EXPONENTS["EUR"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("14.125", "EUR", 1413),  # OCPI complex example: 14,13
        ("0.005", "EUR", 1),
        ("0.00499999", "EUR", 0),
        ("0.015", "EUR", 2),  # half up, not half even (would be 2 too) ...
        ("0.025", "EUR", 3),  # ... here half even would give 2
        ("-0.025", "EUR", -3),  # ties go away from zero
        ("-0.0249", "EUR", -2),
        ("1499.5", "JPY", 1500),
        ("1.2345", "KWD", 1235),
        ("0", "EUR", 0),
        ("123456789.994", "EUR", 12345678999),
    ],
)
def test_to_minor_rounds_half_up(amount: str, currency: str, minor: int) -> None:
    assert money.to_minor(Decimal(amount), currency) == minor


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "sNaN"])
def test_to_minor_rejects_non_finite(amount: str) -> None:
    with pytest.raises(BillingError, match="amount must be a finite number"):
        money.to_minor(Decimal(amount), "EUR")


@settings(max_examples=200)
@given(amount=amounts, currency=st.sampled_from(CURRENCIES))
def test_to_minor_agrees_with_decimal_round_half_up(amount: Decimal, currency: str) -> None:
    exponent = money.minor_exponent(currency)
    expected = amount.scaleb(exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert money.to_minor(amount, currency) == int(expected)
    assert money.ROUNDING == ROUND_HALF_UP


@given(minor=st.integers(-(10**12), 10**12), currency=st.sampled_from(CURRENCIES))
def test_from_minor_round_trips(minor: int, currency: str) -> None:
    major = money.from_minor(minor, currency)
    assert money.to_minor(major, currency) == minor
    assert major == Fraction(minor, 10 ** money.minor_exponent(currency))


def test_from_minor_shows_the_currency_exponent() -> None:
    assert str(money.from_minor(1413, "EUR")) == "14.13"
    assert str(money.from_minor(0, "EUR")) == "0.00"
    assert str(money.from_minor(1413, "JPY")) == "1413"
    assert str(money.from_minor(-1413, "BHD")) == "-1.413"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 6), "0.166667"),
        (Fraction(1, 3), "0.333333"),
        (Fraction(5, 12), "0.416667"),
        (Decimal("20.45"), "20.450000"),
        (Fraction(1, 2_000_000), "0.000001"),  # half up at the last decimal
        (Fraction(0), "0.000000"),
    ],
)
def test_quantize_volume(value: Fraction | Decimal, expected: str) -> None:
    assert str(money.quantize_volume(value)) == expected


def test_line_net_minor_is_reproducible_from_the_printed_line() -> None:
    volume = money.quantize_volume(Fraction(5, 12))  # 25 minutes
    assert money.line_net_minor(volume, Decimal("1.20"), "EUR") == 50
    assert money.line_net_minor(Decimal("0.116"), Decimal("0.25"), "EUR") == 3  # 0.029


@settings(max_examples=150)
@given(
    nets=st.lists(st.integers(-(10**6), 10**7), min_size=0, max_size=8),
    data=st.data(),
)
def test_allocate_vat_sums_to_the_rounded_exact_total(nets: list[int], data: st.DataObject) -> None:
    pcts = data.draw(st.lists(percentages, min_size=len(nets), max_size=len(nets)))
    vats = money.allocate_vat_minor(nets, pcts)
    exact = [Fraction(n) * Fraction(p) / 100 for n, p in zip(nets, pcts, strict=True)]
    total = sum(exact, Fraction(0))
    half_up = (abs(total) + Fraction(1, 2)) // 1
    assert sum(vats) == (half_up if total >= 0 else -half_up)
    assert all(abs(v - x) < 1 for v, x in zip(vats, exact, strict=True))
    if all(n >= 0 for n in nets):
        assert all(v >= 0 for v in vats)


def test_allocate_vat_gives_the_remainder_to_the_largest_fraction_first() -> None:
    # exact 0.4 + 0.4 + 0.4 = 1.2 -> 1: the first of the tied lines gets it
    assert money.allocate_vat_minor([4, 4, 4], [Decimal(10)] * 3) == (1, 0, 0)
    # exact 0.3 + 0.6 = 0.9 -> 1: the larger remainder gets it
    assert money.allocate_vat_minor([3, 6], [Decimal(10)] * 2) == (0, 1)


def test_allocate_vat_rejects_mismatched_lengths() -> None:
    with pytest.raises(BillingError, match="same length"):
        money.allocate_vat_minor([1, 2], [Decimal(10)])


@given(gross=st.integers(-(10**9), 10**9), pct=percentages)
def test_split_gross_adds_up_and_keeps_the_sign(gross: int, pct: Decimal) -> None:
    net, vat = money.split_gross_minor(gross, pct)
    assert net + vat == gross
    assert (net >= 0 and vat >= 0) if gross >= 0 else (net <= 0 and vat <= 0)
    assert abs(Fraction(net) - Fraction(gross) * 100 / (100 + Fraction(pct))) <= Fraction(1, 2)


def test_split_gross_rejects_negative_rate() -> None:
    with pytest.raises(BillingError, match="vat_pct must be >= 0"):
        money.split_gross_minor(100, Decimal(-1))


def test_quantize_pct() -> None:
    assert money.quantize_pct(Fraction(135, 13)) == Decimal("10.38")
    assert money.quantize_pct(Decimal("20.005")) == Decimal("20.01")
