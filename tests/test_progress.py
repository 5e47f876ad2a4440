"""Training progress stays legible when output is not a terminal: full plain lines, at most every N seconds."""

import io

from plastix.progress import TrainProgress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_piped_output_gets_full_plain_lines_at_most_every_n_seconds():
    stream, clock = io.StringIO(), Clock()
    with TrainProgress("HalfCheetah-v4 seeds 0,1", 488 * 2048, 0, stream=stream, every_s=30.0, clock=clock,
                       unit=2048) as progress:
        for update, seconds in ((8, 10.0), (16, 10.0), (24, 15.0), (32, 40.0), (488, 5.0)):
            clock.now += seconds
            progress.advance(update, 2345.6, -12.34)
    lines = stream.getvalue().splitlines()
    assert lines == [
        # at 10 s: 16,384 steps per seed, 1,638.4 per second: (999,424 - 16,384) / 1,638.4 = 600 s to go
        "HalfCheetah-v4 seeds 0,1: 16,384/999,424 steps (1.6%)  2,346 steps/s  return -12.3  ETA 0:10:00",
        # updates 16 (at 20 s) and 24 (at 35 s) come < 30 s after that line: no line. At 75 s: 65,536 steps,
        # 873.8 per second: 933,888 / 873.8 = 1,068.75 s to go
        "HalfCheetah-v4 seeds 0,1: 65,536/999,424 steps (6.6%)  2,346 steps/s  return -12.3  ETA 0:17:49",
        # the last update always prints (5 s later)
        "HalfCheetah-v4 seeds 0,1: 999,424/999,424 steps (100.0%)  2,346 steps/s  return -12.3  ETA 0:00:00",
    ]


def test_a_terminal_gets_the_bar_and_quiet_gets_nothing():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    with TrainProgress("t", 100, stream=Terminal()) as progress:
        assert progress.bar is not None
        progress.advance(50, 1.0, 0.0)
    quiet = io.StringIO()
    with TrainProgress("t", 100, quiet=True, stream=quiet) as progress:
        progress.advance(100, 1.0, 0.0)
    assert quiet.getvalue() == "" and progress.bar is None
