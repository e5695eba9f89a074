"""Fakes that unit tests share (DESIGN.md: testing/). Integration tests use none of them."""
