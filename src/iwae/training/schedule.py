"""Learning-rate schedules.

paper [Burda et al. 2016, sec. 5.1]: for i = 0..7, 3^i passes at lr0 * 10^(-i/7)
    (1 + 3 + ... + 2187 = 3280 epochs); epochs past 3280 stay at the last rate.
code  [yburda/iwae]: the same stages at 1e-4 * round(10^(1 - i/7), 1), i.e.
    1.0e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1.0e-4.
constant: lr0 every epoch (Table 2's fine-tuning runs at 1e-4).
cosine: lr0 (1 + cos(pi e / epochs)) / 2 at epoch e of a run of `epochs` [Loshchilov & Hutter
    2017, without restarts], epochs past the run's (a refit's) at its last rate: large steps first, small ones last, so that a short run ends
    near the optimum that a constant rate only circles (iwae.Imputer(schedule="cosine");
    results/imputer_budget.md has it beside the constant rate).
"""
import bisect
import math

SCHEDULES = ("paper", "code", "constant", "cosine")
STAGE_ENDS = tuple(sum(3 ** j for j in range(i + 1)) for i in range(8))   # 1, 4, 13, 40, 121, 364, 1093, 3280
PAPER_EPOCHS = STAGE_ENDS[-1]


def stage(epoch):
    """The schedule stage i of a 0-based epoch (0 for epoch 0, 1 for epochs 1-3, ...)."""
    return min(7, bisect.bisect_right(STAGE_ENDS, epoch))


def learning_rate(epoch, schedule="paper", lr0=1e-3, epochs=None):
    """The learning rate of 0-based epoch `epoch`; epochs: the run's length (cosine's period)."""
    if schedule == "cosine":
        return lr0 * (1 + math.cos(math.pi * min(epoch, epochs - 1) / epochs)) / 2
    if schedule == "paper":
        return lr0 * 10 ** (-stage(epoch) / 7)
    if schedule == "code":
        return 1e-4 * round(10 ** (1 - stage(epoch) / 7), 1)
    if schedule == "constant":
        return lr0
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
