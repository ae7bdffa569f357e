# The two commands of the README's quickstart, and the steps they share.
# Run as root on Debian 12 (the machine kind our CI uses): setup installs
# Podman, PostgreSQL, Chromium and the rest with apt (see scripts/setup.sh).

.PHONY: setup demo test lint bench

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/pytest -p no:cacheprovider -q

bench: setup
	.venv/bin/python -m benchmarks
