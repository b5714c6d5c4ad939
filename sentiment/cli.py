"""The ``sentiment`` command (``train``, ``score``, ``evaluate``, ``serve``) and the entry points
behind train.py and serve.py."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from .errors import Interrupted, SentimentError
from .options import add_options, from_args


def _train_parser(parser: argparse.ArgumentParser) -> None:
    from .train.recipes import TrainConfig

    add_options(parser, TrainConfig)
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue the run in RUN_DIR from its last checkpoint (its saved options are used)")


def _train(args: argparse.Namespace) -> int:
    from .train.training import TrainConfig, train

    from .train.recipes import typed_options

    config = from_args(TrainConfig, args)
    train(config, resume=args.resume, typed=typed_options(args.argv) if args.resume else None)
    return 0


def _score_parser(parser: argparse.ArgumentParser) -> None:
    from .scoring.score import ScoreConfig

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a .txt (one review per line), .csv, .tsv, .jsonl or .parquet file, "
                             "a folder of .txt files (one review each), or - for standard input")
    add_options(parser, ScoreConfig)


def _score(args: argparse.Namespace) -> int:
    from .bundle import default_model_dir, load_bundle
    from .scoring.score import ScoreConfig, check_output, score

    config = from_args(ScoreConfig, args, inputs=args.inputs)
    if config.engine == "ray":
        from .scoring.ray_score import score_on_ray

        written = score_on_ray(config)
        if written["rows"] is not None:
            print(f"rows written: {written['rows']} in {written['parts']} parts under {config.out}", file=sys.stderr)
        return 0
    check_output(config)  # a bad --out/--format, or an input it would replace, fails before the model loads
    classifier = load_bundle(config.model or default_model_dir(), precision=config.precision)
    counts = score(config, classifier)
    print(counts.line(), file=sys.stderr)
    return 0


def _evaluate_parser(parser: argparse.ArgumentParser) -> None:
    from .evaluate.evaluation import EvaluateConfig

    parser.add_argument("--model", dest="models", action="append", default=[], metavar="DIR",
                        help="model bundle folder; repeat to compare models (default: the shipped model)")
    add_options(parser, EvaluateConfig)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate.evaluation import EvaluateConfig, evaluate

    evaluate(from_args(EvaluateConfig, args))
    return 0


def _serve_parser(parser: argparse.ArgumentParser) -> None:
    from .serve.app import ServeConfig

    parser.add_argument("--model", dest="models", action="append", default=[], metavar="DIR",
                        help="model bundle folder; repeat to load several and compare them "
                             "(default: the shipped model)")
    add_options(parser, ServeConfig)


def _serve(args: argparse.Namespace) -> int:
    from .serve.app import ServeConfig

    config = from_args(ServeConfig, args)
    if config.engine == "ray":
        from .serve.ray_serve import serve_on_ray

        serve_on_ray(config)
    else:
        from .serve.server import launch

        launch(config)
    return 0


def _calibrate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="DIR", required=True,
                        help="model bundle folder to calibrate (its config.json is rewritten); repeatable")
    parser.add_argument("--data", default=None, metavar="SRC",
                        help="the training data, where it now lives (default: the path in the bundle's config)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="datasets cache folder")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="calibrate on data whose fingerprint is not the one the bundle was trained on")
    parser.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                        help="also weigh the classes for balanced decisions, as train.py --balanced does "
                             "(default: keep them if the bundle has them; --no-balanced drops them)")


def _calibrate(args: argparse.Namespace) -> int:
    from .train.calibrate import calibrate_bundle

    for model in args.models:
        calibrate_bundle(model, args.data, args.cache_dir, args.allow_other_data, args.balanced)
    return 0


def _behaviour_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="DIR",
                        help="model bundle folder; repeat to compare (default: every shipped model)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the failure rates to this file")


def _behaviour(args: argparse.Namespace) -> int:
    import json

    from .evaluate.behaviour import failure_rates, format_rates
    from .bundle import load_bundle, model_names, shipped_bundles
    from .data import is_negative_positive
    from .files import check_file_target, write_text_atomic

    if args.json:
        check_file_target(args.json, "--json")
    models = args.models or [str(path) for path in shipped_bundles()]
    rates = {}
    for name, path in zip(model_names(models), models):
        clf = load_bundle(path, precision="float32")
        if not is_negative_positive(clf.labels):
            # The tests' sentences say what must be negative or positive; other classes have no such truth.
            print(f"{name}: not tested: behaviour tests are about negative/positive, and {path}'s classes are "
                  f"{', '.join(clf.labels)}")
            continue
        rates[name] = failure_rates(clf)
    if rates:
        print(format_rates(rates))
    if args.json:
        write_text_atomic(args.json, json.dumps({"models": dict(zip(model_names(models), models)),
                                                 "failure_rates": rates}, indent=2) + "\n")
    return 0


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a classifier and write a model bundle", _train_parser, _train),
    "score": ("score reviews in files or from standard input", _score_parser, _score),
    "evaluate": ("metrics of models on labelled reviews", _evaluate_parser, _evaluate),
    "serve": ("the web page and JSON API on http://127.0.0.1:7860", _serve_parser, _serve),
    "behaviour": ("failure rates of behaviour tests (negation, contrast, invariances) per model",
                  _behaviour_parser, _behaviour),
    "calibrate": ("fit a bundle's calibration (a temperature by length) on its validation split and excerpts of it",
                  _calibrate_parser, _calibrate),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s options are built (each command's options import its
    module, and a command imports only what it runs: ``score`` never loads training code)."""
    parser = argparse.ArgumentParser(prog="sentiment", description="Sentiment of movie reviews with recurrent networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, _) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if command is None or name == command:
            add(subparser)
    return parser


def _hold_closed_standard_fds() -> None:
    """A command started with stdin, stdout or stderr closed (``<&-``, ``>&-``, ``2>&-``) gets
    /dev/null in that place: a file it opens later would otherwise take the number, and
    whatever writes to "standard output" would write into that file. ``sys.stdin`` and
    ``sys.stdout`` stay None, so a command that needs them says it; messages for a closed
    stderr go nowhere."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr on a full disk or gone: the exit status still tells
        pass


class _StandardOutput:
    """``sys.stdout`` while a command runs, whose failures name it: what a command prints
    to a full disk or /dev/full is then one line, "standard output: writing failed". A closed
    pipe (output piped into ``head``) stays a BrokenPipeError, which ends the command quietly."""

    def __init__(self, stream):
        self.stream = stream

    def _failing(self, act, *args):
        try:
            return act(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise SentimentError(f"standard output: writing failed ({exc.strerror or exc})") from None

    def write(self, text: str) -> int:
        return self._failing(self.stream.write, text)

    def flush(self) -> None:
        self._failing(self.stream.flush)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _drop_stdout() -> None:
    """Send what is still buffered for a standard output that failed to /dev/null, where
    Python's flush at exit succeeds."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(handler: Callable[[], int]) -> int:
    """Run a command: bad input is one line on stderr and exit status 2, Ctrl-C is 130;
    never a traceback for either, from the first import of the command on."""
    try:
        _hold_closed_standard_fds()
        if sys.stdout is not None:
            sys.stdout = _StandardOutput(sys.stdout)
        status = handler()
        if sys.stdout is not None:
            sys.stdout.flush()  # a failure to print shows here, not as Python's message at exit
        return status
    except SentimentError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Interrupted):  # a command that said what it leaves behind said enough
            _say("interrupted")
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly.
        return 0
    except OSError as exc:
        # What the system refused where no check of ours foresaw it: still one line, naming the file.
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"error: {where}{exc.strerror or exc}")
        return 2
    finally:
        if isinstance(sys.stdout, _StandardOutput):
            sys.stdout = sys.stdout.stream
        _drop_stdout()


def _run_parsed(parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
                command: Callable[[argparse.Namespace], int]) -> int:
    # Parsing is inside run(): building a command's options imports its modules (torch among
    # them), and a Ctrl-C there is a Ctrl-C like any other.
    def parsed() -> argparse.Namespace:
        args = parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # what was typed, defaults apart
        return args

    return run(lambda: command(parsed()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    return _run_parsed(lambda: build_parser(command if command in COMMANDS else ""), argv,
                       lambda args: COMMANDS[args.command][2](args))


def _entry_parser(name: str, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=COMMANDS[name][0])
    COMMANDS[name][1](parser)
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    """``python train.py ...``: the same as ``sentiment train ...``."""
    return _run_parsed(lambda: _entry_parser("train", "train.py"), argv, _train)


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``python serve.py ...``: the same as ``sentiment serve ...``."""
    return _run_parsed(lambda: _entry_parser("serve", "serve.py"), argv, _serve)
