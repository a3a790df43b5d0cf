"""Errors raised by the billing core.

One root, :class:`BillingError`; each subclass names what was wrong with the input and keeps
structured context (``tariff_id``, ``field``) so the shell can log it or dead-letter the event
without parsing the message.

Examples
--------
>>> try:
...     raise TariffError("unknown timezone 'Mars/Olympus'", tariff_id="T1", field="timezone")
... except BillingError as exc:
...     print(exc, "|", exc.field)
tariff 'T1': unknown timezone 'Mars/Olympus' | timezone
"""

from __future__ import annotations

__all__ = ["BillingError", "SessionError", "TariffError", "UnknownCurrencyError"]


class BillingError(Exception):
    """Root of every error raised by :mod:`billing`."""


class UnknownCurrencyError(BillingError):
    """A currency code for which voltguard knows no ISO 4217 minor-unit exponent."""

    def __init__(self, currency: str) -> None:
        super().__init__(f"unknown ISO 4217 currency {currency!r}: no minor-unit exponent")
        self.currency = currency


class TariffError(BillingError):
    """A tariff that cannot be rated.

    Unknown currency or timezone, a malformed restriction (time, date), a step size below 1,
    a negative or non-finite VAT, ``min_price_minor`` above ``max_price_minor``.
    """

    def __init__(
        self, message: str, *, tariff_id: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(f"tariff {tariff_id!r}: {message}" if tariff_id else message)
        self.tariff_id = tariff_id
        self.field = field


class SessionError(BillingError):
    """Session input that cannot be rated.

    Naive datetimes, ``end <= start``, negative energy or power, periods that overlap or lie
    outside the session.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
