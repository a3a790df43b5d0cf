"""Shipped column mappings for CSV session exports (``<name>.yaml``, one per dataset).

Load one with :func:`topics.adapters.csv_sessions.load_shipped_mapping`; each file's comment
header names the dataset, its origin and licence, and the quirks the mapping handles.
"""
