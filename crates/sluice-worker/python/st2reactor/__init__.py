"""StackStorm's st2reactor package, as far as pack sensors import it (Sluice's own)."""
