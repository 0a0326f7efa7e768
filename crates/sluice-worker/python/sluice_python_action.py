"""Runs a python-script action the way StackStorm does.

A file that imports from st2common or st2actions, or defines a class deriving from one
whose name ends in "Action" (through its own classes and the modules it imports, such as a
pack's lib/ base classes; read, not run), is imported, its most derived Action
subclass is built, and run(**parameters) is called with the
parameters read as JSON from stdin. The outcome goes to the file named by
SLUICE_RESULT_FILE: {"succeeded": bool, "result": value}, or {"error", "traceback"} when
the module cannot be loaded or run raises. Any other file runs as a plain script, as
`python3 FILE` would run it.
"""

import ast
import importlib.util
import json
import os
import runpy
import socket
import sys
import traceback


def base_names(node):
    for base in node.bases:
        if isinstance(base, ast.Attribute):
            yield base.attr
        elif isinstance(base, ast.Name):
            yield base.id


def parsed(path):
    try:
        with open(path, "rb") as source:
            return ast.parse(source.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None


def module_file(module, level, here):
    """The file of `module` as the action would import it: from its own directory for a
    relative import, else from the action's import path."""
    parts = (module or "").split(".") if module else []
    roots = [here] if level else sys.path
    for root in roots:
        base = root
        for _ in range(max(level - 1, 0)):
            base = os.path.dirname(base)
        path = os.path.join(base, *parts)
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
    return None


def is_action_class(tree, path, name, depth):
    """Whether class `name` of the module at `path` derives from a class named *Action,
    following the module's own classes and its imports (a pack's lib/ base classes)."""
    if depth > 8 or tree is None:
        return False
    imported = {}
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name, node.level)
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = node
    node = classes.get(name)
    if node is None:
        return False
    for base in base_names(node):
        if base.endswith("Action"):
            return True
        if base in classes and base != name and is_action_class(tree, path, base, depth + 1):
            return True
        if base in imported:
            module, original, level = imported[base]
            other = module_file(module, level, os.path.dirname(path))
            if other and is_action_class(parsed(other), other, original, depth + 1):
                return True
    return False


def uses_action_class(tree, path):
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            "st2common",
            "st2actions",
        ):
            return True
        if isinstance(node, ast.ClassDef) and is_action_class(tree, path, node.name, 0):
            return True
    return False


def report(outcome):
    with open(os.environ["SLUICE_RESULT_FILE"], "w") as out:
        json.dump(outcome, out, default=str)


def action_class(module, base):
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, base) and value is not base
    ]
    own = [cls for cls in found if cls.__module__ == module.__name__] or found
    # The most derived: one no other candidate subclasses.
    leaves = [cls for cls in own if not any(o is not cls and issubclass(o, cls) for o in own)]
    return leaves[0] if leaves else None


class KeyValuePair(object):
    """A datastore key as list_values returns it: its name, its value (sealed when secret)."""

    def __init__(self, name, value, secret):
        self.name = name
        self.value = value
        self.secret = secret

    def __repr__(self):
        return "KeyValuePair(name=%r, secret=%r)" % (self.name, self.secret)


class ActionService(object):
    """StackStorm's action service: the datastore, through the worker running the action.

    local=True (the default) names a key of the action's own pack; local=False a system
    key. A secret is written with encrypt=True and read in clear with decrypt=True."""

    def __init__(self, path):
        self._path = path
        self._file = None

    def _call(self, request):
        if self._file is None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(self._path)
            self._file = connection.makefile("rwb")
        self._file.write(json.dumps(request, default=str).encode("utf-8") + b"\n")
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise RuntimeError("the worker closed the action service")
        answer = json.loads(line)
        if "error" in answer:
            raise ValueError(answer["error"])
        return answer.get("result")

    def get_value(self, name, local=True, scope="system", decrypt=False):
        return self._call(
            {"op": "get_value", "name": name, "local": local, "scope": scope, "decrypt": decrypt}
        )

    def set_value(self, name, value, ttl=None, local=True, scope="system", encrypt=False):
        request = {
            "op": "set_value",
            "name": name,
            "value": value,
            "local": local,
            "scope": scope,
            "encrypt": encrypt,
        }
        if ttl is not None:
            request["ttl"] = int(ttl)
        return self._call(request)

    def delete_value(self, name, local=True, scope="system"):
        return self._call({"op": "delete_value", "name": name, "local": local, "scope": scope})

    def list_values(self, local=True, prefix=None):
        found = self._call({"op": "list_values", "local": local, "prefix": prefix or ""})
        return [KeyValuePair(e["name"], e["value"], e["secret"]) for e in found]


def build(cls, config, action_service):
    """The action, as StackStorm builds it: many packs' classes take only `config`, and
    get the action service set afterwards."""
    try:
        return cls(config=config, action_service=action_service)
    except TypeError as error:
        if "action_service" not in str(error):
            raise
    action = cls(config=config)
    action.action_service = action_service
    return action


def main():
    script = os.path.abspath(sys.argv[1])
    with open(script, "rb") as source:
        tree = ast.parse(source.read(), script)
    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(script))
    if not uses_action_class(tree, script):
        runpy.run_path(script, run_name="__main__")
        return
    text = sys.stdin.read()
    parameters = json.loads(text) if text.strip() else {}
    try:
        spec = importlib.util.spec_from_file_location("sluice_action", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sluice_action"] = module
        spec.loader.exec_module(module)
        from st2common.runners.base_action import Action

        cls = action_class(module, Action)
        if cls is None:
            report(
                {
                    "error": "%s defines no subclass of st2common.runners.base_action.Action"
                    % script
                }
            )
            sys.exit(1)
        config = {}
        config_file = os.environ.get("SLUICE_CONFIG_FILE")
        if config_file:
            with open(config_file) as source:
                config = json.load(source)
        socket_path = os.environ.get("SLUICE_SERVICE_SOCKET")
        service = ActionService(socket_path) if socket_path else None
        action = build(cls, config, service)
        action.entry_point = script
        value = action.run(**parameters)
    except Exception as error:
        report(
            {
                "error": "%s: %s" % (type(error).__name__, error),
                "traceback": traceback.format_exc(),
            }
        )
        traceback.print_exc()
        sys.exit(1)
    succeeded = True
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
        succeeded, value = value
    report({"succeeded": succeeded, "result": value})
    sys.exit(0 if succeeded else 1)


if __name__ == "__main__":
    main()
