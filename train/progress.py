"""Training progress: Keras' bar on a terminal, a line every few percent in a log file.

Keras' `Progbar` redraws itself with `\\r` on every update even when stdout is a file
(it treats every POSIX system as a terminal), so a 3,000-step run redirected to a file
wrote 370 KB of bar. `bar()` returns that bar only when stdout is a TTY; otherwise a
`LineProgress` that prints one line every `percent` % of the steps (and at least every
`seconds`), with the loss, the time per step and the ETA.
"""

import sys
import time

import keras


def bar(total_steps, *, enabled=True, stream=None):
    """A progress reporter with `update(step, values=[("loss", value), ...])`."""
    stream = sys.stdout if stream is None else stream
    if enabled and getattr(stream, "isatty", lambda: False)():
        return keras.utils.Progbar(total_steps, stateful_metrics=["loss"], verbose=1)
    return LineProgress(total_steps, enabled=enabled, stream=stream)


def format_duration(seconds):
    """`1:02:03`, `2:03` or `45s`."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    if minutes:
        return f"{minutes}:{secs:02d}"
    return f"{secs}s"


class LineProgress:
    """Prints `step 150/3000 (5%) loss 0.1234, 0.113 s/step, ETA 5:22` every `percent` % of the steps.

    The time per step is measured from the end of the first step on (the first step
    also traces the train step), once there is a later one.

    Args:
        total_steps: Steps of the whole run.
        enabled: False prints nothing (`--noprogress`).
        percent: A line whenever the step crosses a multiple of this share of `total_steps`.
        seconds: ... or when this long has passed since the last line.
        stream: Where to print (stdout).
        clock: The time source (tests pass a fake one).
    """

    def __init__(self, total_steps, *, enabled=True, percent=5, seconds=300, stream=None, clock=time.monotonic):
        self.total = total_steps
        self.enabled = enabled
        self.every = max(1, round(total_steps * percent / 100))
        self.seconds = seconds
        self.stream = sys.stdout if stream is None else stream
        self.clock = clock
        self.start_step = self.start_time = self.last_time = None
        self.timed = None  # (step, time) after the first step: the rate leaves out the trace.

    def update(self, current, values=None):
        now = self.clock()
        if self.start_step is None:  # The first call gives the starting (or resumed) step.
            self.start_step, self.start_time, self.last_time = current, now, now
            return
        if self.timed is None:
            self.timed = (current, now)
        due = current % self.every == 0 or current >= self.total or now - self.last_time >= self.seconds
        if not (self.enabled and due and current > self.start_step):
            return
        self.last_time = now
        since_step, since_time = self.timed if current > self.timed[0] else (self.start_step, self.start_time)
        per_step = (now - since_time) / (current - since_step)
        parts = [f"step {current}/{self.total} ({100 * current // max(self.total, 1)}%)"]
        parts += [f"{name} {value:.4g}" for name, value in values or ()]
        line = " ".join(parts) + f", {per_step:.3f} s/step"
        if current < self.total:
            line += f", ETA {format_duration(per_step * (self.total - current))}"
        print(line, file=self.stream, flush=True)
