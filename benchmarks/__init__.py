"""Benchmarks: scripts that compare the bot with a baseline measured in the same run.

They are not tests and assert nothing about time; they print a table (bot,
baseline, ratio, goal) and can write the figures as JSON. See README.md.
"""
