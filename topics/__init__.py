"""The wire: event records, the topic catalog, codecs and adapters from the outside world."""
