"""The one entry point: `python -m l2rw_tf.main --flagfile=configs/<setting>.flags`.

Two tasks:

* `--task=imbalance`: MNIST 4 vs 9 class imbalance (paper Fig. 2; configs/mnist_imbalance.flags).
  Flag names follow the original scripts (`pos_ratio`, `ntrain`, `nval`, `ntest`, ...).
* `--task=noisy` (the default): noisy labels (paper Tables 1-2, reference §3), UniformFlip or
  BackgroundFlip on `mnist`, `cifar10`, `cifar100` or `folder:PATH`. Settings left unset take the
  paper's values for the dataset, noise and model, so
  `python -m l2rw_tf.main --dataset=cifar10 --noise=uniform --ratio=0.4` is Table 1's CIFAR-10
  setting (WRN-28-10, 1,000 clean images, 60K steps, lr 0.1 -> 0.01 -> 0.001 at 40K / 50K).

A run writes into `--logdir` (see train.py); rerunning the same command resumes it, and a
finished run is reported, not rerun.

This module is the absl shell only: every flag is a field of `config.RunConfig` (its help text
there too), defined here from those fields; the parsed flags become a RunConfig, which
`launch.launch` runs. Bad input exits 2 with a one-line error, a signal 128 + its number.
"""
import locale
import os
import signal
import sys

from absl import flags

from l2rw_tf import config as run_config
from l2rw_tf.config import UsageError
from l2rw_tf.launch import Stopped, launch

FLAGS = flags.FLAGS

DEFINE = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
          "float": flags.DEFINE_float, "bool": flags.DEFINE_bool, "list": flags.DEFINE_list}


def define_flags():
    """One flag per RunConfig field, with its default and help (defined from this module, so
    that `--help` lists them as this entry point's)."""
    for field in run_config.FIELDS:
        kind, help_text = field.metadata["kind"], field.metadata["help"]
        if kind == "enum":
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["enum"]), help_text)
        else:
            DEFINE[kind](field.name, field.default, help_text)


define_flags()


def main(argv, stop_at_step=None):
    """Runs the parsed flags; returns the final metrics (as written to result.json)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
    return launch(run_config.from_flags(FLAGS), stop_at_step=stop_at_step)


def check_flagfiles(args, including=()):
    """Refuses, before absl reads them, flagfiles among `args` (command-line arguments or the
    lines of a flagfile) that cannot be read, are not text in the locale's encoding (absl would
    raise OSError or UnicodeDecodeError), or include themselves (absl would only warn, and run
    without the rest of the file). `including`: the flagfiles being read, outermost first."""
    encoding = locale.getpreferredencoding(False)
    args = list(args)
    for i, arg in enumerate(args):
        if not FLAGS._is_flag_file_directive(arg):  # noqa: SLF001 -- absl's own rule
            continue
        if arg in ("--flagfile", "-flagfile"):
            if i + 1 >= len(args):
                continue  # absl's own one-line error
            path = os.path.expanduser(args[i + 1])
        else:
            path = FLAGS._extract_filename(arg)  # noqa: SLF001
        if not path:
            continue
        real = [os.path.realpath(p) for p in including]
        if os.path.realpath(path) in real:
            chain = " -> ".join([*including[real.index(os.path.realpath(path)):], path])
            raise UsageError(f"flagfile {path} includes itself ({chain}); remove that --flagfile "
                             f"line")
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as e:
            raise UsageError(f"cannot read flagfile {path} ({e.strerror or type(e).__name__})"
                             + (f", named in {including[-1]}" if including else "")) from None
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise UsageError(f"flagfile {path} is not {encoding} text (byte 0x{raw[e.start]:02x} "
                             f"at offset {e.start}); save it as {encoding}") from None
        # As absl reads a flagfile: a line that starts with a flagfile directive includes it.
        check_flagfiles([line for line in text.splitlines()
                         if FLAGS._is_flag_file_directive(line)],  # noqa: SLF001
                        (*including, path))


def run(argv, stop_at_step=None):
    """In-process entry (tests, notebooks): parses `argv` afresh (argv[0] is the program name,
    flagfiles included) and runs it; bad input raises UsageError or flags.Error."""
    FLAGS.unparse_flags()
    check_flagfiles(list(argv)[1:])
    FLAGS(list(argv))
    return main([argv[0]], stop_at_step=stop_at_step)


HELP_ARGS = {"-h": False, "-?": False, "--help": False, "--helpshort": False, "--helpfull": True}


def print_help(full):
    """The flags of this entry point (`full`: of every module, absl's own included)."""
    module = sys.modules[__name__]
    print(__doc__.strip().splitlines()[0])
    print(f"\nUsage: python -m l2rw_tf.main [--flagfile=configs/<setting>.flags] [--flag=value ...]"
          f"\n")
    print(FLAGS.get_help() if full else FLAGS.module_help(module))
    if not full:
        print("\nTry --helpfull to get a list of all flags.")


def raise_stopped(signum, frame):  # noqa: ARG001
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name} before training started")


def entry(argv=None):
    """Parses flags (flagfiles included) and runs; bad input exits 2 with a one-line error, a
    signal 128 + its number with one line (training saves a checkpoint first)."""
    argv = sys.argv if argv is None else argv
    helps = [HELP_ARGS[a] for a in argv[1:] if a in HELP_ARGS]
    if helps:
        print_help(full=any(helps))
        sys.exit(0)
    # SIGTERM, like SIGINT, unwinds (the lock is removed); the training loop defers both.
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        check_flagfiles(argv[1:])
        main(FLAGS(argv))
        sys.exit(0)
    except (flags.Error, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"l2rw_tf: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("l2rw_tf: stopped by SIGINT before training started", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    entry()
