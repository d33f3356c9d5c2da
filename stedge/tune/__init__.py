"""`stedge tune`: time an artifact's variants on this machine and store the profile the runtime chooses by.

The measuring and the profile format live in the torch-free runtime (``stedge_runtime.tune``,
``stedge_runtime.profile``, ``stedge_runtime.select``); this package adds the command, the table and
the ``stedge export --tune`` hook.
"""

from __future__ import annotations

from .cli import register, render_choice, render_profile, run_tune

__all__ = ["register", "run_tune", "render_profile", "render_choice"]
