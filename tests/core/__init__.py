"""Tests of lookalike.core."""
