"""Runs a pack sensor the way StackStorm does: python3 sluice_sensor.py FILE CLASS [POLL].

The class is built with a sensor service and the pack's configuration (read from the file
SLUICE_CONFIG_FILE names), then setup() is called, add_trigger() once for each enabled rule
on its triggers (read from SLUICE_SENSOR_TRIGGERS_FILE), and run(); a PollingSensor polls
every POLL seconds when given. While it runs, each line on stdin,
{"op": "add_trigger" | "update_trigger" | "remove_trigger", "trigger": {...}}, is that call,
made on a thread of its own as StackStorm's sensor container makes it. SIGTERM calls cleanup() and ends the process, and so does the end of stdin: the process
that started the sensor is gone. The service reaches
Sluice through the Unix socket SLUICE_SERVICE_SOCKET names: dispatch() publishes a trigger,
get_value() and the rest use the datastore. Logs go to stderr, which Sluice logs.
"""

import importlib.util
import json
import logging
import os
import signal
import sys
import threading

from sluice_python_action import ActionService


class SensorService(ActionService):
    def __init__(self, path, sensor):
        super(SensorService, self).__init__(path)
        self._sensor = sensor

    def dispatch(self, trigger, payload=None, trace_tag=None):
        request = {"op": "dispatch", "trigger": trigger, "payload": payload}
        if trace_tag is not None:
            request["trace_tag"] = str(trace_tag)
        return self._call(request)

    def dispatch_with_context(self, trigger, payload=None, trace_context=None):
        tag = getattr(trace_context, "trace_tag", None) if trace_context is not None else None
        return self.dispatch(trigger, payload, tag)

    def get_logger(self, name):
        return logging.getLogger("sensor.%s.%s" % (self._sensor, name))


def main():
    script, class_name = os.path.abspath(sys.argv[1]), sys.argv[2]
    poll_interval = float(sys.argv[3]) if len(sys.argv) > 3 else None
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    sys.path.insert(0, os.path.dirname(script))
    config = {}
    if os.environ.get("SLUICE_CONFIG_FILE"):
        with open(os.environ["SLUICE_CONFIG_FILE"]) as source:
            config = json.load(source)
    spec = importlib.util.spec_from_file_location("sluice_sensor_module", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sluice_sensor_module"] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if cls is None:
        sys.stderr.write("%s defines no class %s\n" % (script, class_name))
        sys.exit(2)
    service = SensorService(os.environ["SLUICE_SERVICE_SOCKET"], class_name)
    from st2reactor.sensor.base import PollingSensor

    if issubclass(cls, PollingSensor) and poll_interval is not None:
        sensor = cls(sensor_service=service, config=config, poll_interval=poll_interval)
    else:
        sensor = cls(sensor_service=service, config=config)

    def stop(signum, frame):
        try:
            sensor.cleanup()
        finally:
            os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    sensor.setup()
    if os.environ.get("SLUICE_SENSOR_TRIGGERS_FILE"):
        with open(os.environ["SLUICE_SENSOR_TRIGGERS_FILE"]) as source:
            for trigger in json.load(source):
                sensor.add_trigger(trigger)
    threading.Thread(target=hear_rule_changes, args=(sensor,), daemon=True).start()
    sensor.run()


def hear_rule_changes(sensor):
    log = logging.getLogger("sluice.sensor")
    for line in sys.stdin:
        try:
            change = json.loads(line)
            op = change["op"]
            if op not in ("add_trigger", "update_trigger", "remove_trigger"):
                raise ValueError("unknown call %r" % op)
            getattr(sensor, op)(change["trigger"])
        except Exception:
            log.exception("%s failed", line.strip())
    # The end of stdin is the end of the process that started this sensor (an engine
    # killed, or one that lost its lease): stop as SIGTERM would, so that no sensor outlives
    # its engine and runs beside the one the next engine starts.
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
