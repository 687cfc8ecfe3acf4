"""preannotate.cli.display: which progress mode a command picks, and the plain lines."""

from __future__ import annotations

import argparse
import asyncio
import io

import pytest
from rich.console import Console

from preannotate.cli import display
from preannotate.cli.main import main


def _console(*, terminal: bool) -> Console:
    return Console(file=io.StringIO(), width=80, force_terminal=terminal, color_system=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_mode_follows_the_terminal_then_the_environment_then_the_flag(monkeypatch):
    monkeypatch.delenv(display.ENV, raising=False)
    assert display.choose(_console(terminal=False)) == "plain"
    assert display.choose(_console(terminal=True)) == "bar"
    monkeypatch.setenv(display.ENV, "none")
    assert display.choose(_console(terminal=True)) == "none"
    assert display.choose(_console(terminal=True), "plain") == "plain"
    monkeypatch.setenv(display.ENV, "auto")
    assert display.choose(_console(terminal=True)) == "bar"


def test_a_bad_mode_is_refused_with_what_to_write(monkeypatch, capsys):
    monkeypatch.setenv(display.ENV, "fancy")
    with pytest.raises(ValueError, match="'fancy' is not a progress mode: use bar, plain or none"):
        display.choose(_console(terminal=False))
    with pytest.raises(SystemExit) as exit_:  # the CLI refuses it before any work
        main(["watch", "job-1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'fancy' is not a progress mode" in err and display.ENV in err


def test_the_option_takes_the_environment_as_its_default(monkeypatch):
    monkeypatch.setenv(display.ENV, "plain")
    parser = argparse.ArgumentParser()
    display.add_option(parser)
    assert parser.parse_args([]).progress == "plain"
    assert parser.parse_args(["--progress", "none"]).progress == "none"


def test_elapsed_reads_as_words():
    assert display.elapsed(7.9) == "7 s"
    assert display.elapsed(130) == "2 min 10 s"
    assert display.elapsed(3900) == "1 h 5 min"


def test_a_line_at_each_change_and_at_most_one_per_interval_between():
    console, clock = _console(terminal=False), Clock()
    lines = display.Lines(console, interval=15, clock=clock)
    lines.show("export: running", key="export")
    clock.now += 5
    lines.show("train: running, step 10/600", key="train")  # a new stage: at once
    for step in range(20, 300, 10):  # figures move every second: no line before 15 s
        clock.now += 0.5
        lines.show(f"train: running, step {step}/600", key="train")
    clock.now = 1000 + 130
    lines.show("train: running, step 300/600, loss 0.4100", key="train")
    assert console.file.getvalue().splitlines() == [
        "export: running, 0 s elapsed",
        "train: running, step 10/600, 5 s elapsed",
        "train: running, step 300/600, loss 0.4100, 2 min 10 s elapsed",
    ]


def test_a_silent_stage_repeats_its_line_every_interval():
    console, clock = _console(terminal=False), Clock()
    lines = display.Lines(console, interval=15, clock=clock)
    lines.beat()  # nothing shown yet: nothing to repeat
    lines.show("convert: running")
    clock.now += 10
    lines.beat()
    clock.now += 10
    lines.beat()
    assert console.file.getvalue().splitlines() == [
        "convert: running, 0 s elapsed",
        "convert: running, 20 s elapsed",
    ]


async def test_beating_repeats_the_line_in_the_background():
    console = _console(terminal=False)
    lines = display.Lines(console, interval=0.05)
    async with asyncio.timeout(10), lines.beating():
        lines.show("convert: running")
        while len(console.file.getvalue().splitlines()) < 3:
            await asyncio.sleep(0.01)
    printed = len(console.file.getvalue().splitlines())
    await asyncio.sleep(0.2)  # stopped with the block
    assert len(console.file.getvalue().splitlines()) == printed


def test_disabled_lines_print_nothing():
    console = _console(terminal=False)
    lines = display.Lines.for_mode(console, "bar", interval=0)
    lines.show("train: running")
    lines.beat()
    assert console.file.getvalue() == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["quickstart", "--progress", "fancy"],
        ["train", "--task", "1", "--model", "m", "--progress", "fancy"],
        ["annotate", "--task", "1", "--model", "m", "--progress", "fancy"],
        ["weights", "pull", "--progress", "fancy"],
    ],
)
def test_every_long_command_takes_the_option(argv, monkeypatch, capsys):
    monkeypatch.delenv(display.ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "'fancy' is not a progress mode: use bar, plain or none" in capsys.readouterr().err
