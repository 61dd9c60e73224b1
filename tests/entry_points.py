"""Runs an absl entry point of train/ in this process, as its command line would."""

from absl import flags

from train import train as train_main


def run(argv, entry=train_main):
    """`entry.main` with the flags `argv` parsed into absl's FLAGS, which are reset afterwards."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train"] + argv)
    try:
        entry.main([])
    finally:
        flags.FLAGS.unparse_flags()
