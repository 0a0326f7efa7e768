"""StackStorm's base classes of pack sensors, as Sluice provides them.

A Sensor's run() is called once and may loop forever; a PollingSensor's poll() is called
every poll_interval seconds. setup() comes first and cleanup() when the sensor is stopped.
Triggers go out through self.sensor_service.dispatch(trigger, payload, trace_tag).
"""

import time


class Sensor(object):
    def __init__(self, sensor_service, config=None):
        self._sensor_service = sensor_service
        self.sensor_service = sensor_service
        self._config = config if config is not None else {}
        self.config = self._config

    def setup(self):
        raise NotImplementedError("%s defines no setup()" % type(self).__name__)

    def run(self):
        raise NotImplementedError("%s defines no run()" % type(self).__name__)

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass


class PollingSensor(Sensor):
    def __init__(self, sensor_service, config=None, poll_interval=5):
        super(PollingSensor, self).__init__(sensor_service=sensor_service, config=config)
        self._poll_interval = poll_interval

    def poll(self):
        raise NotImplementedError("%s defines no poll()" % type(self).__name__)

    def run(self):
        while True:
            self.poll()
            time.sleep(self._poll_interval)

    def get_poll_interval(self):
        return self._poll_interval

    def set_poll_interval(self, poll_interval):
        self._poll_interval = poll_interval
