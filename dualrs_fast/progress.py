"""Progress bars that suit where stderr goes.

On a terminal (or in a notebook): a tqdm bar with rate and ETA. Elsewhere (a log file, a
CI job) a bar would write a line per refresh, so instead a call prints at most three lines,
at 25 / 50 / 75 %, each with its ETA, and only once it has run for ``QUIET_AFTER_S``
seconds: a short call prints nothing.

``enabled``: True (show), False (never) or None ("auto": a bar on a terminal only, and only
once the call has run ``AUTO_DELAY_S`` seconds, so a long call shows its ETA and a short one
prints nothing).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

AUTO_DELAY_S = 5.0
QUIET_AFTER_S = 10.0
MILESTONES = (0.25, 0.5, 0.75)


def interactive() -> bool:
    """Does stderr show a live bar (a terminal, or a Jupyter kernel's widget)?"""
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) or "ipykernel" in sys.modules


def progress_bar(total: int, desc: str, unit: str, enabled: Optional[bool] = True,
                 unit_scale: bool = False, leave: bool = False):
    """A tqdm bar, or its few-lines stand-in off a terminal (see the module docstring).
    Supports ``update``, ``set_postfix_str``, ``set_postfix``, ``close`` and ``with``."""
    from tqdm.auto import tqdm
    live = interactive()
    if enabled is False or (enabled is None and not live):
        return tqdm(total=total, disable=True)
    if live:
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave,
                    file=sys.stderr, dynamic_ncols=True,
                    delay=AUTO_DELAY_S if enabled is None else 0.0)
    return MilestoneLines(total, desc, unit)


class MilestoneLines:
    """At most one line per milestone (25 / 50 / 75 %) on stderr, none in the first
    ``QUIET_AFTER_S`` seconds."""

    def __init__(self, total: int, desc: str, unit: str, stream=None,
                 quiet_after_s: float = QUIET_AFTER_S, clock=time.monotonic):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.quiet_after_s, self.clock = quiet_after_s, clock
        self.start, self.n, self.postfix = clock(), 0, ""
        self.next_milestone = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        fraction = self.n / self.total if self.total else 1.0
        passed = self.next_milestone
        while passed < len(MILESTONES) and fraction >= MILESTONES[passed]:
            passed += 1
        if passed == self.next_milestone:
            return
        self.next_milestone = passed  # milestones crossed while still quiet are skipped
        elapsed = self.clock() - self.start
        if elapsed < self.quiet_after_s or fraction >= 1.0:
            return
        eta = elapsed * (1.0 - fraction) / fraction
        postfix = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {100 * fraction:.0f}% ({self.n:,}/{self.total:,} {self.unit}, "
              f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}{postfix})",
              file=self.stream, flush=True)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
