"""Entry points start without TensorFlow's C++ noise, say what they run, and log progress sparsely to files."""

import io
import logging
import os
import subprocess
import sys

import keras

from train import progress, startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dim=16",
    "--latent=16",
    "--decoder_dim=16",
    "--iters=2",
    "--batch_size=8",
    "--eval_iters=1,2",
    "--generated_train=24",
    "--generated_val=8",
]


def env_without_log_level():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it for the test process.
    return env


def test_train_run_prints_no_start_up_noise_and_says_what_it_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.train",
            "--flagfile=" + os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg"),
            *TINY,
            "--train_steps=40",
            f"--cache_dir={tmp_path / 'cache'}",
            f"--model_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=env_without_log_level(),
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for pattern in startup.NOISE:
        assert pattern not in proc.stderr and pattern not in proc.stdout, pattern
    assert "Sharding callback duration" not in proc.stderr
    lines = proc.stdout.splitlines()
    # Ours come first: data, model, budget.
    assert lines[0] == (
        f"Data: clevr_state_autoencoder from generated, cache {tmp_path / 'cache'}: 24 training examples."
    ), lines[:3]
    assert lines[1].startswith("Model: SetAutoEncoder with a dspn decoder, 2 inner steps, ")
    assert lines[1].endswith(" parameters.") and int(lines[1].split(", ")[-1].split()[0].replace(",", "")) > 1000
    assert lines[2].startswith("Budget: 40 steps of batch 8 (13.3 epochs); run directory ")
    # stdout is a pipe: one line per 5 % of the steps with an ETA, no bar redrawing.
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{s}/40" for s in range(2, 41, 2)]
    assert all(", ETA " in line for line in steps[:-1]) and " s/step" in steps[-1]
    assert "\r" not in proc.stdout and "\b" not in proc.stdout
    assert "AP inf" in proc.stdout


def test_without_the_start_up_module_tensorflow_is_noisy_and_a_user_level_is_respected():
    # The control: plain TensorFlow prints start-up lines on this kind of machine, and a
    # TF_CPP_MIN_LOG_LEVEL the user set turns the filter off (the same lines appear).
    script = "from train import startup\nimport tensorflow as tf\nprint(tf.constant(1).numpy())\n"
    env = env_without_log_level()
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    user = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert user.returncode == 0 and user.stdout.strip() == "1", user.stderr[-2000:]
    assert any(startup.is_noise(line) for line in user.stderr.splitlines()), user.stderr[-2000:]
    quiet = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env_without_log_level(), cwd=ROOT
    )
    assert quiet.returncode == 0 and quiet.stdout.strip() == "1", quiet.stderr[-2000:]
    assert not any(startup.is_noise(line) for line in quiet.stderr.splitlines()), quiet.stderr


def test_startup_keeps_other_stderr_lines_and_skips_a_user_level():
    assert startup.is_noise("I0000 00:00:1.5  1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized")
    assert not startup.is_noise("Traceback (most recent call last):")
    environ = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    assert startup.quiet_tensorflow(environ) is False and environ == {"TF_CPP_MIN_LOG_LEVEL": "1"}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_line_progress_prints_every_five_percent_with_eta():
    out, clock = io.StringIO(), FakeClock()
    bar = progress.LineProgress(100, stream=out, clock=clock)
    bar.update(0)
    clock.now = 10.0  # The first step (with the trace) takes 10 s, the others 0.5 s.
    bar.update(1, values=[("loss", 0.5)])
    for step in range(2, 101):
        clock.now += 0.5
        bar.update(step, values=[("loss", 1.0 / step)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 20
    assert lines[0] == "step 5/100 (5%) loss 0.2, 0.500 s/step, ETA 48s"
    assert lines[9] == "step 50/100 (50%) loss 0.02, 0.500 s/step, ETA 25s"
    assert lines[-1] == "step 100/100 (100%) loss 0.01, 0.500 s/step"


def test_line_progress_after_a_resume_and_a_time_cap():
    out, clock = io.StringIO(), FakeClock()
    bar = progress.LineProgress(1000, stream=out, clock=clock, seconds=60)
    bar.update(500)  # Resumed at step 500: the rate counts only this process's steps.
    for step in range(501, 504):
        clock.now += 40.0
        bar.update(step)
    # Step 502 is 80 s after the start (due by time), step 503 only 40 s after it.
    assert out.getvalue().splitlines() == ["step 502/1000 (50%), 40.000 s/step, ETA 5:32:00"]


def test_bar_is_keras_on_a_terminal_and_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress.bar(10, stream=Terminal()), keras.utils.Progbar)
    assert isinstance(progress.bar(10, stream=io.StringIO()), progress.LineProgress)
    out = io.StringIO()
    quiet = progress.bar(10, enabled=False, stream=out)
    for step in range(11):
        quiet.update(step, values=[("loss", 1.0)])
    assert out.getvalue() == ""
    assert progress.format_duration(3725) == "1:02:05" and progress.format_duration(59.6) == "1:00"


def test_tensorflow_info_records_are_dropped_and_others_kept():
    def record(level, path):
        return logging.LogRecord("absl", level, path, 1, "message", None, None)

    tf_file = os.path.join("site-packages", "tensorflow", "python", "checkpoint", "functional_saver.py")
    assert not startup.drop_tensorflow_info(record(logging.INFO, tf_file))
    assert startup.drop_tensorflow_info(record(logging.WARNING, tf_file))
    assert startup.drop_tensorflow_info(record(logging.INFO, os.path.join(ROOT, "train", "loop.py")))


def test_every_entry_point_imports_the_start_up_filter_first():
    """TensorFlow prints its C++ start-up lines at import, so any import before train.startup lets them through."""
    import ast
    import glob

    entries = []
    for path in sorted(glob.glob(os.path.join(ROOT, "train", "*.py"))):
        tree = ast.parse(open(path).read())
        if "app.run(" not in ast.unparse(tree):
            continue
        entries.append(os.path.basename(path))
        first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
        assert isinstance(first, ast.ImportFrom) and first.module == "train", path
        assert [alias.name for alias in first.names] == ["startup"], path
    assert entries == ["evaluate.py", "export.py", "pictures.py", "train.py"]
