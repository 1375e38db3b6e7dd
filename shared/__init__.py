"""Plumbing shared by every model folder: data, CLI, run logging, checkpoints, distributed set-up.

No model code lives here (see CONTRIBUTING.md): each model folder reads alone.
"""
