"""Runtimes that run review workspaces; see :mod:`bot.runtime.base`."""
