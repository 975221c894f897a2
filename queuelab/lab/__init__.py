"""Lesson helpers: queueing theory and its checks, twins from bursts, alternatives, memory, profiles."""
