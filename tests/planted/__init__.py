"""Scenarios with planted behaviour (crash, hang, raise, failing check) for runner tests."""
