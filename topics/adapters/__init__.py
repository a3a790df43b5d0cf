"""Adapters from outside payloads (OCPP frames, PSP bodies, CSV exports) to canonical records."""
