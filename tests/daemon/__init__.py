"""Tests of lookalike.daemon and the `lookalike` command."""
