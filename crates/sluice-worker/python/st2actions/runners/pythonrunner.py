"""`from st2actions.runners.pythonrunner import Action`, as packs written for older StackStorm import it."""

from st2common.runners.base_action import Action  # noqa: F401
