"""StackStorm's base class of python-script actions, as Sluice provides it.

An action subclasses Action and defines run(**parameters). What run returns is the
execution's result; a (succeeded, result) tuple also sets whether it succeeded; an exception
fails it with the traceback.
"""

import logging


class Action(object):
    description = None

    def __init__(self, config=None, action_service=None):
        # The pack's configuration, and the datastore service StackStorm passes actions.
        self.config = config if config is not None else {}
        self.action_service = action_service
        self.logger = logging.getLogger("st2.actions.python.%s" % type(self).__name__)
        self.entry_point = None

    def run(self, **kwargs):
        raise NotImplementedError("%s defines no run()" % type(self).__name__)
