"""The parts of StackStorm's st2common that python-script actions import, as Sluice provides them."""
