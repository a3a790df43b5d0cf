"""Pure money logic: OCPI 2.2.1 tariffs, session rating and reconciliation. No I/O, no clock.

Modules
-------
``billing.rating``
    :func:`~billing.rating.rate_session` rates a session, given as
    :class:`~billing.rating.ChargingPeriod` stretches, against an OCPI 2.2.1
    :class:`~topics.records.Tariff` and returns a :class:`~billing.rating.RatedSession`
    whose :class:`~topics.records.BillLine` lines (component, volume, unit price, VAT %,
    net, VAT) an analyst can check by hand.
``billing.money``
    ISO 4217 minor-unit exponents and the one place where voltguard rounds money
    (``ROUND_HALF_UP``: net per bill line, VAT once per bill).
``billing.exceptions``
    :class:`~billing.exceptions.BillingError` and its subclasses (``TariffError``,
    ``SessionError``, ``UnknownCurrencyError``).
"""
