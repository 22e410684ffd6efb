"""The checks of arguments that several parts of the math share, each written once."""


def positive_int(name, value):
    """value if it is an integer >= 1 (not a bool), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def divisor(name, value, k):
    """value if it is an integer that divides k (the groups of k samples), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or k % value:
        raise ValueError(f"{name} must be a positive divisor of k={k}, got {value!r}")
    return value


def unit_interval(name, value):
    """value if it is a number in [0, 1], else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
