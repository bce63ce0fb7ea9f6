"""Helpers the tests share, by the part they exercise (on the path via pytest's ``pythonpath``)."""
