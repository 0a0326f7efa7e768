from st2common.runners.base_action import Action


class Immediate(Action):
    def run(self, n):
        return {"n": n}
