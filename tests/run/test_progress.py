"""Tests of blackout_jax.run.progress: training lines, chunk and sampler progress, one reporter."""

from __future__ import annotations

import io

import jax

import blackout_jax as bj
from blackout_jax.run import progress


def test_progress_lines_without_a_terminal():
    stream = io.StringIO()
    reporter = progress.ProgressReporter(200, 0, use_bar=False, stream=stream)
    reporter.log(50, {"loss": 1.23456, "skipped_updates": 0})
    reporter.message("eval at step 50")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 50/200 (25.0%) | loss 1.235 skipped_updates 0 | ")
    assert "steps/s | ETA " in lines[0]
    assert lines[1] == "eval at step 50"


def test_progress_disabled_prints_nothing(capsys):
    stream = io.StringIO()
    reporter = progress.ProgressReporter(
        10, 0, description="hidden", use_bar=False, enabled=False, stream=stream
    )
    reporter.log(5, {"loss": 1.0})
    reporter.message("hidden")
    reporter.update(10)
    assert stream.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_training_updates_write_no_lines_without_a_description(capsys):
    reporter = progress.ProgressReporter(10, use_bar=False)
    for step in range(1, 11):
        reporter.update(step)
    assert capsys.readouterr() == ("", "")


def test_tracked_chunks_write_a_line_per_tenth(capsys):
    reporter = progress.ProgressReporter(20, unit="chunk", description="chunks", use_bar=False)
    assert list(reporter.track(range(20))) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("chunks: 2/20 chunks, ")
    assert lines[-1].startswith("chunks: 20/20 chunks, ")


def test_the_callback_form_starts_a_new_loop_when_the_count_falls(capsys):
    reporter = progress.ProgressReporter(0, description="sampling", use_bar=False)
    for run_total in (10, 10, 4):
        for done in range(1, run_total + 1):
            reporter(done, run_total)
    finals = [line for line in capsys.readouterr().err.splitlines() if "10/10" in line]
    assert len(finals) == 2
    assert reporter.total == 4


def test_the_sampler_reporter_is_one_object_on_the_primary_host_of_a_terminal_only():
    reporter = progress.sampler_progress(terminal=True)
    assert reporter is not None
    assert progress.sampler_progress(True, terminal=True) is reporter
    assert progress.sampler_progress(False, terminal=True) is None
    assert progress.sampler_progress(True, terminal=False) is None


def test_the_sampler_reports_its_steps(capsys):
    times = bj.observation_times(40, 10.0)

    def predict(counts, t):
        return (4 - counts).astype(jax.numpy.float32)

    bj.sample(
        jax.random.key(0),
        predict,
        (2, 3),
        times,
        max_count=4,
        progress=progress.sampler_progress(terminal=True),
    ).block_until_ready()
    jax.effects_barrier()
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("sampling: 40/40 steps, ")


def test_a_bar_opens_at_the_first_report_and_carries_the_scalars():
    reporter = progress.ProgressReporter(10, 2, use_bar=True, stream=io.StringIO())
    reporter.log(4, {"loss": 0.5})
    assert reporter._bar.n == 4
    assert "loss 0.5" in str(reporter._bar)
    reporter.close()
