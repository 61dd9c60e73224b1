r"""Kill drill: SIGKILL a real training run at random moments, restart it, and check nothing was lost.

    python tools/kill_drill.py --kills=24 --workdir=/tmp/kill_drill

Runs `python -m train.train --flagfile=<config>` (the quick start's config with a
small budget, `--deterministic`) once uninterrupted as the reference, then runs the
same command again in a fresh run directory and cache, SIGKILLing its process group
(as a node or container kill does) at random moments, restarting the same command
each time, until `--kills` kills have landed; the last start runs to the end. The
kills rotate over the moments that matter (`--moments`): first-run data generation
and its cache write, training steps, checkpoint writes and evaluation (periodic and
final). The moments are found from the run's machine-readable phase events
(`train/events.py`: `--model_dir/run_events.jsonl`) and its files, not from the
sentences it prints.

Afterwards it checks, and reports as JSON:

- as many kills landed as were asked for (a run that ends before the next kill
  moment comes fails the drill, naming how many landed);
- every start either was killed by the drill or ended with exit code 0 at the
  target step, none printed a Python traceback, and each resumed from the newest
  checkpoint on disk when it began (so no partial checkpoint was ever written where
  a complete one belongs, and none had to be skipped; nor was a partial cache or
  generated dataset ever read);
- the final checkpoint's step is the target, and its weights, optimizer state and
  the final loss equal the reference's (`--deterministic`);
- the generated data cache equals the reference's;
- TensorBoard holds exactly one value per tag and step in `train/` and `eval/`, for
  the same steps as the reference and with the same values (no second curve over
  the steps redone after a resume);
- `eval_results.json` equals the reference's.

The exit code is 0 when every check passes, else 1 with the failures on stderr.
`tests/test_kill_drill.py` runs a short version with a tiny model.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from train import events  # noqa: E402  (after the repository root is on the path)

DEFAULT_CONFIG = "configs/clevr_mini_state_autoencoder_dspn.cfg"
# A small budget of the quick start's config: every moment worth a kill comes
# round within a few seconds, and 20+ restarts fit in minutes on two cores.
DEFAULT_OVERRIDES = (
    "--generated_train=2000",
    "--generated_val=128",
    "--train_steps=400",
    "--checkpoint_every=10",
    "--eval_every=50",
    "--eval_iters=10,20",
    "--image_every=50",
    "--log_every=1",
    "--keep_checkpoints=2",
    "--deterministic",
    "--noprogress",
)
MOMENTS = ("data", "step", "checkpoint", "evaluation")
# Names of the temporary files and folders the writers rename into place.
_TEMP_PATTERNS = ("**/.clevr_states-*", "**/.CLEVR_v1.0.partial-*", "**/*.tmp-*", "**/.purging.tmp", "**/*_temp*")


def command(config, model_dir, cache_dir, overrides):
    return [
        sys.executable,
        "-m",
        "train.train",
        f"--flagfile={config}",
        *overrides,
        f"--model_dir={model_dir}",
        f"--cache_dir={cache_dir}",
    ]


class Start:
    """One start of the command: its process (own process group), output lines, and the phase events it wrote.

    Args:
        argv: The command.
        model_dir: Its run directory; the events this process appends to its events
            file (`train/events.py`) from now on are this start's.
    """

    def __init__(self, argv, model_dir):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.model_dir = model_dir
        self.newest_checkpoint = newest_checkpoint_step(model_dir)  # What this start should resume from.
        self.events = []  # This start's events, each with "seconds" since the start.
        self._offset = events.size(model_dir)
        self.started = time.time()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines = []  # (seconds since start, line)
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append((time.time() - self.started, line.rstrip("\n")))
                self.changed.notify_all()

    def text(self):
        return "\n".join(line for _, line in self.lines)

    def read_events(self):
        """Reads the events this start wrote since the last call into `self.events`; returns `self.events`."""
        found, self._offset = events.read(self.model_dir, self._offset)
        for record in found:
            if record.get("pid") == self.proc.pid:
                self.events.append({**record, "seconds": record.get("time", self.started) - self.started})
        return self.events

    def event(self, name, where=None):
        """This start's first event `name` (for which `where(event)` holds) read so far, or None."""
        return next((e for e in self.events if e["event"] == name and (where is None or where(e))), None)

    def wait_for_event(self, name, timeout, where=None):
        """Waits for this start's event `name` (for which `where(event)` holds); None if the process ended or timed out."""
        deadline = time.time() + timeout
        while True:
            ended = self.proc.poll() is not None  # Before reading: an event written just before the end counts.
            self.read_events()
            found = self.event(name, where)
            if found is not None or ended or time.time() > deadline:
                return found
            time.sleep(0.01)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.finish(60)

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return code


def newest_checkpoint_step(model_dir):
    """The largest step of a checkpoint index in `model_dir/checkpoints`, or 0 if there is none."""
    names = glob.glob(os.path.join(glob.escape(model_dir), "checkpoints", "ckpt-*.index"))
    return max((int(m.group(1)) for n in names if (m := re.search(r"ckpt-(\d+)\.index$", n))), default=0)


def temp_artefacts(folder):
    return sorted({p for pattern in _TEMP_PATTERNS for p in glob.glob(os.path.join(folder, pattern), recursive=True)})


def data_ready(cache_dir):
    """True once the generated data of the run is cached (the state .npz files or a rendered folder)."""
    npz = glob.glob(os.path.join(cache_dir, "clevr_states", "clevr_states_*.npz"))
    folders = glob.glob(os.path.join(cache_dir, "clevr_mini_*", "CLEVR_v1.0"))
    return len(npz) >= 2 or bool(folders)


def _kill_at(start, moment, rng, model_dir, cache_dir, timing):
    """Waits for `moment` in `start` and kills it there; returns what the kill hit, or None if it never came."""
    workdir = os.path.dirname(model_dir)
    stale = set(temp_artefacts(workdir))  # Left by earlier kills.
    if moment == "data":
        # A random moment between the start and the reference's "data ready", or the
        # instant a temporary cache file shows up, whichever comes first.
        delay = rng.uniform(0.3, timing["data"])
        deadline = start.started + delay
        before = set(temp_artefacts(cache_dir))  # Left by earlier kills: not this start's writes.
        while time.time() < deadline and start.proc.poll() is None:
            if set(temp_artefacts(cache_dir)) - before:
                break
            time.sleep(0.002)
    elif moment == "step":
        if start.wait_for_event(events.TRAINING, timeout=600) is None:
            return None
        # After this start's first new checkpoint, so that the drill moves through the run
        # (a kill right after every resume would keep redoing the same steps).
        resumed = _resume_step(start)
        if start.wait_for_event(events.CHECKPOINT, timeout=120, where=lambda e: e["step"] > resumed) is None:
            return None
        time.sleep(rng.uniform(0.0, timing["steps"]))
    elif moment == "checkpoint":
        if start.wait_for_event(events.TRAINING, timeout=600) is None:
            return None
        checkpoint_dir = os.path.join(model_dir, "checkpoints")
        # Only a save of this start counts (the loop removes a killed start's leftovers, but not instantly).
        before = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(checkpoint_dir, "*_temp*"))}
        deadline = time.time() + 60
        skip = rng.random() < 0.5  # Half the time the second save of this start, again to move on.
        while start.proc.poll() is None:
            now = glob.glob(os.path.join(checkpoint_dir, "*_temp*"))
            if any(p not in before or _mtime(p) != before[p] for p in now):
                if not skip:
                    break
                skip, before = False, {p: _mtime(p) for p in now}
                deadline = time.time() + 60
            if time.time() > deadline:
                moment = "step"  # No checkpoint write came (the run is past its last one).
                break
            time.sleep(0.001)
    elif moment == "evaluation":
        # Half the time the next evaluation past the resume step (not the one redone at it); the resume
        # step is known once training begins.
        if start.wait_for_event(events.TRAINING, timeout=600) is None:
            return None
        resumed = _resume_step(start) if rng.random() < 0.5 else -1
        began = start.wait_for_event(events.EVALUATING, timeout=600, where=lambda e: e["step"] > resumed)
        if began is None:
            return None
        time.sleep(rng.uniform(0.0, timing["evaluation"]))
        start.read_events()
        if start.event(events.EVALUATED, where=lambda e: e["step"] == began["step"]) is not None:
            moment = "after evaluation"
    if start.proc.poll() is not None:
        return None
    start.read_events()
    last_event = start.events[-1] if start.events else {}
    hit = {
        "moment": moment,
        "seconds": round(time.time() - start.started, 2),
        "temp_files": [os.path.relpath(p, workdir) for p in temp_artefacts(workdir) if p not in stale],
        "last_event": {k: v for k, v in last_event.items() if k not in ("time", "pid", "seconds")},
        "last_line": start.lines[-1][1] if start.lines else "",
        "data_ready": data_ready(cache_dir),
    }
    code = start.kill()
    hit["exit_code"] = code
    return hit if code == -signal.SIGKILL else None


def _resume_step(start):
    """The step this start resumed at (its `resumed` event), 0 if it started afresh."""
    resumed = start.event(events.RESUMED)
    return int(resumed["step"]) if resumed else 0


def _resume_problem(start, number):
    """Why start `number` did not resume from the newest checkpoint on disk when it began; None if it did.

    A start that skipped an unreadable checkpoint (a partial one written where a complete
    one belongs) or lost one resumes at an older step. Starts killed before they restored
    (no `resumed` or `training` event) are not judged.
    """
    start.read_events()
    if start.event(events.RESUMED) is None and start.event(events.TRAINING) is None:
        return None
    resumed = _resume_step(start)
    if resumed == start.newest_checkpoint:
        return None
    return (
        f"start {number} resumed at step {resumed}, but the newest checkpoint on disk when it began was "
        f"step {start.newest_checkpoint}"
    )


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _problems_in(output):
    """A Python traceback in a start's output (the interpreter's marker of an exception it printed)."""
    return ["Traceback"] if "Traceback (most recent call last)" in output else []


def _checkpoint_tensors(model_dir):
    import tensorflow as tf

    prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype != tf.variant and not key.startswith("save_counter"):
            out[key] = reader.get_tensor(key)
    return prefix, out


def _events(log_dir):
    """{(tag, step): [values...]} of every scalar in the event files of `log_dir`, duplicates kept."""
    from tensorboard.util import tensor_util

    from train import summaries

    values = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        records, _ = summaries.read_records(path)
        for _, event in records:
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tensor_util.make_ndarray(value.tensor)
                    if array.dtype.kind == "f" and array.size == 1:
                        values.setdefault((value.tag, event.step), []).append(float(array.reshape(-1)[0]))
                        continue
                values.setdefault((value.tag, event.step), []).append(None)  # Pictures and text: counted only.
    return values


def _content_hashes(cache_dir):
    """Sorted SHA-256 digests of the cache's files, leaving out temporaries, .npz (zip timestamps) and meta.json."""
    temp = set(temp_artefacts(cache_dir))
    digests = []
    for folder, _, names in os.walk(cache_dir):
        if any(folder == t or folder.startswith(t + os.sep) for t in temp):
            continue
        for name in names:
            path = os.path.join(folder, name)
            if path in temp or name.endswith(".npz") or name == "meta.json":
                continue
            with open(path, "rb") as f:
                digests.append(hashlib.sha256(f.read()).hexdigest())
    return sorted(digests)


def compare_runs(reference_dir, drilled_dir, reference_cache, drilled_cache):
    """The checks of the drilled run against the reference; returns (failures, figures)."""
    import numpy as np

    failures, figures = [], {}
    ref_prefix, ref = _checkpoint_tensors(reference_dir)
    got_prefix, got = _checkpoint_tensors(drilled_dir)
    figures["final_checkpoint"] = os.path.basename(got_prefix)
    if os.path.basename(ref_prefix) != os.path.basename(got_prefix):
        failures.append(f"final checkpoint {got_prefix}, reference {ref_prefix}")
    if set(ref) != set(got):
        failures.append(f"checkpoint keys differ: {sorted(set(ref) ^ set(got))[:5]}")
    diffs = []
    for key in sorted(set(ref) & set(got)):
        a, b = np.asarray(ref[key]), np.asarray(got[key])
        if a.dtype.kind in "fiub" and a.shape == b.shape:
            diffs.append(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)))
        elif not np.array_equal(a, b):
            failures.append(f"checkpoint tensor {key} differs from the reference")
    figures["max_abs_weight_difference"] = max(diffs) if diffs else None
    if diffs and max(diffs) != 0.0:
        failures.append(f"final weights differ from the reference by up to {max(diffs)}")
    for sub in ("train", "eval"):
        ref_events = _events(os.path.join(reference_dir, sub))
        got_events = _events(os.path.join(drilled_dir, sub))
        duplicated = sorted(k for k, v in got_events.items() if len(v) > 1)
        figures[f"{sub}_points"] = len(got_events)
        figures[f"{sub}_duplicated_points"] = len(duplicated)
        if duplicated:
            failures.append(f"{sub}: {len(duplicated)} (tag, step) pairs logged twice, e.g. {duplicated[:3]}")
        missing, extra = sorted(set(ref_events) - set(got_events)), sorted(set(got_events) - set(ref_events))
        if missing or extra:
            failures.append(f"{sub}: steps missing {missing[:3]} ({len(missing)}), extra {extra[:3]} ({len(extra)})")
        different = sorted(k for k in ref_events if k in got_events and ref_events[k][-1:] != got_events[k][-1:])
        if different:
            failures.append(f"{sub}: {len(different)} values differ from the reference, e.g. {different[:3]}")
        if sub == "train":
            last = max(step for tag, step in ref_events if tag == "train/loss")
            figures["final_loss"] = got_events.get(("train/loss", last), [None])[-1]
            figures["reference_final_loss"] = ref_events[("train/loss", last)][-1]
    # The HParams dashboard's records: re-logged by every start, so they must not pile up.
    hparams = _events(os.path.join(drilled_dir, "hparams"))
    figures["hparams_duplicated_points"] = sum(1 for v in hparams.values() if len(v) > 1)
    if figures["hparams_duplicated_points"]:
        failures.append(f"hparams: {figures['hparams_duplicated_points']} (tag, step) pairs logged more than once")
    for name in ("eval_results.json",):
        with open(os.path.join(reference_dir, name)) as f:
            ref_results = json.load(f)
        try:
            with open(os.path.join(drilled_dir, name)) as f:
                got_results = json.load(f)
        except (OSError, ValueError) as e:
            failures.append(f"{name}: {e}")
            continue
        if ref_results != got_results:
            failures.append(f"{name} differs from the reference")
    ref_npz = sorted(glob.glob(os.path.join(reference_cache, "clevr_states", "*.npz")))
    got_npz = sorted(glob.glob(os.path.join(drilled_cache, "clevr_states", "*.npz")))
    if [os.path.basename(p) for p in ref_npz] != [os.path.basename(p) for p in got_npz]:
        failures.append(f"data caches differ: {got_npz} vs {ref_npz}")
    for a, b in zip(ref_npz, got_npz):
        with np.load(a) as x, np.load(b) as y:
            if any(not np.array_equal(x[k], y[k]) for k in x.files):
                failures.append(f"data cache {b} differs from the reference")
    # Every other cached or generated file (rendered PNGs, scene JSON, image-cache shards): the same
    # contents as the reference's (names hold paths and mtimes, so the contents are compared).
    ref_files, got_files = _content_hashes(reference_cache), _content_hashes(drilled_cache)
    figures["cached_files_compared"] = len(ref_files)
    if ref_files != got_files:
        failures.append(f"cached files differ from the reference ({len(got_files)} vs {len(ref_files)} files)")
    figures["leftover_temp_files"] = [os.path.relpath(p, drilled_cache) for p in temp_artefacts(drilled_cache)]
    return failures, figures


def drill(
    workdir,
    *,
    kills,
    config=DEFAULT_CONFIG,
    overrides=DEFAULT_OVERRIDES,
    seed=0,
    max_starts=None,
    moments=MOMENTS,
    log=print,
):
    """Runs the reference and the drilled run under `workdir`; returns the report dict.

    Args:
        workdir: An empty folder for both runs and their caches.
        kills: SIGKILLs to land before the run may finish; fewer is a failure.
        config: Flagfile of the run.
        overrides: Flags after the flagfile.
        seed: Seed of the kill moments.
        max_starts: Starts after which the drill gives up (default `4 * kills + 10`).
        moments: Which of `MOMENTS` to kill at ("data" only while the first start's data is not cached).
        log: Called with a line of progress.

    Returns:
        The report dict; its `failures` list is empty when every check passed.
    """
    unknown = set(moments) - set(MOMENTS)
    if unknown or not moments:
        raise ValueError(f"kill drill: moments must be some of {MOMENTS}; received {tuple(moments)}.")
    training_moments = [m for m in MOMENTS if m in moments and m != "data"]
    rng = random.Random(seed)
    reference_dir, reference_cache = (
        os.path.join(workdir, "reference", "run"),
        os.path.join(workdir, "reference", "cache"),
    )
    drilled_dir, drilled_cache = os.path.join(workdir, "drill", "run"), os.path.join(workdir, "drill", "cache")
    for folder in (reference_dir, drilled_dir):
        if os.path.exists(folder):
            raise FileExistsError(f"{folder} exists: give the drill an empty --workdir.")
    report = {
        "config": config,
        "overrides": list(overrides),
        "kills_asked": kills,
        "kills_tried": 0,
        "kills": [],
        "starts": 0,
    }

    log("Reference run (uninterrupted) ...")
    reference = Start(command(config, reference_dir, reference_cache, overrides), reference_dir)
    code = reference.finish(timeout=1800)
    if code != 0:
        raise RuntimeError(f"The reference run failed (exit code {code}):\n{reference.text()[-3000:]}")
    reference.read_events()
    training, trained = reference.event(events.TRAINING), reference.event(events.TRAINED)
    budget = training["seconds"] if training else 5.0
    trained = trained["seconds"] if trained else budget + 5.0
    timing = {
        "data": budget,
        "steps": max(0.5, min(3.0, (trained - budget) / 4)),
        "evaluation": 1.0,
    }
    report["reference_seconds"] = round(time.time() - reference.started, 1)
    log(f"Reference done in {report['reference_seconds']} s; drilling ({kills} kills) ...")

    argv = command(config, drilled_dir, drilled_cache, overrides)
    failures, moment_index, data_kills = [], 0, 0
    max_starts = max_starts or 4 * kills + 10
    drill_start = time.time()
    while True:
        report["starts"] += 1
        if report["starts"] > max_starts:
            failures.append(f"gave up after {max_starts} starts")
            break
        start = Start(argv, drilled_dir)
        if len(report["kills"]) >= kills:
            code = start.finish(timeout=1800)
            output = start.text()
            report["final_start_output_tail"] = output.splitlines()[-6:]
            if code != 0:
                failures.append(f"the final start ended with exit code {code}: {output[-2000:]}")
            failures += [f"final start printed {p!r}" for p in _problems_in(output)]
            failures += [p for p in [_resume_problem(start, report["starts"])] if p]
            break
        if "data" in moments and not data_ready(drilled_cache) and data_kills < max(1, kills // 6):
            moment, data_kills = "data", data_kills + 1  # First-run generation only happens until it succeeds.
        elif training_moments:
            moment = training_moments[moment_index % len(training_moments)]
            moment_index += 1
        else:
            moment = None  # Only data kills were asked for, and the data is cached.
        report["kills_tried"] += 1
        hit = _kill_at(start, moment, rng, drilled_dir, drilled_cache, timing) if moment else None
        output = start.text()
        failures += [f"start {report['starts']} printed {p!r}" for p in _problems_in(output)]
        if hit is None:
            code = start.finish(timeout=1800)
            failures += [p for p in [_resume_problem(start, report["starts"])] if p]
            if code != 0:
                failures.append(f"start {report['starts']} ended with exit code {code}: {output[-2000:]}")
                break
            # The run reached its end before the moment came: the drill is over, short of kills.
            report["ended_before_all_kills"] = True
            failures.append(
                f"only {len(report['kills'])} of {kills} kills landed: start {report['starts']} ran to its end "
                f"before the {moment or 'data'} moment came (a longer run, e.g. more --train_steps, gives more moments)"
            )
            break
        failures += [p for p in [_resume_problem(start, report["starts"])] if p]
        hit["resumed_at"] = _resume_step(start) if start.event(events.RESUMED) else None
        report["kills"].append(hit)
        log(f"kill {len(report['kills'])}: {hit['moment']} at {hit['seconds']} s (last event {hit['last_event']})")
    report["drill_seconds"] = round(time.time() - drill_start, 1)
    report["kills_landed"] = len(report["kills"])
    if report["kills_landed"] < kills and not report.get("ended_before_all_kills"):
        failures.append(f"only {report['kills_landed']} of {kills} kills landed")
    report["kills_survived"] = len(report["kills"]) if not failures else None
    if not failures:
        more, figures = compare_runs(reference_dir, drilled_dir, reference_cache, drilled_cache)
        failures += more
        report.update(figures)
        report["kills_survived"] = len(report["kills"]) if not more else 0
    counts = {}
    for hit in report["kills"]:
        counts[hit["moment"]] = counts.get(hit["moment"], 0) + 1
    report["kills_by_moment"] = counts
    report["kills_during_temp_writes"] = sum(1 for hit in report["kills"] if hit["temp_files"])
    report["failures"] = failures
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="Empty folder for the two runs and their caches.")
    parser.add_argument("--kills", type=int, default=24, help="SIGKILLs to land before the run may finish.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="Flagfile of the run.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    parser.add_argument(
        "--moments",
        default=",".join(MOMENTS),
        help=f"Comma-separated moments to kill at, some of {','.join(MOMENTS)}.",
    )
    parser.add_argument("--report", help="Write the JSON report here as well.")
    parser.add_argument("overrides", nargs="*", help="Flags replacing the drill's default overrides.")
    args = parser.parse_args()
    overrides = tuple(args.overrides) or DEFAULT_OVERRIDES
    moments = tuple(m.strip() for m in args.moments.split(",") if m.strip())
    report = drill(
        args.workdir, kills=args.kills, config=args.config, overrides=overrides, seed=args.seed, moments=moments
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    if report["failures"]:
        print(
            f"Kill drill FAILED ({report['kills_landed']} of {args.kills} kills landed): "
            + "; ".join(f[:300] for f in report["failures"]),
            file=sys.stderr,
        )
        sys.exit(1)
    print(f"Kill drill passed: {report['kills_landed']} of {args.kills} kills landed and survived.", file=sys.stderr)


if __name__ == "__main__":
    main()
