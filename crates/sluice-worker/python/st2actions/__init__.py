"""StackStorm's older import path for the action base class."""
