"""`nels`: one command, subcommands that read like English. Every result-printing command has --json.

Exit status: 0 success, 1 some items failed (the batch still finished), 2 usage error or missing library.
"""
from __future__ import annotations

import argparse
import os
import sys

from nels import config
from nels.cli.output import print_json  # noqa: F401 - `from nels.cli import print_json`
from nels.errors import NelsError


def _default_library() -> str:
    return config.library_path()


CATALOGUE_HELP = ("the library's catalogue: postgresql://USER@HOST:PORT/DB (several machines write one library) or a"
                  " SQLite file (default: $NELS_CATALOGUE, else the URL the library folder recorded, else"
                  " LIBRARY/nels.db)")


def _runner_arguments(s) -> None:
    """--runner and its options (ingest, crawl, reindex)."""
    s.add_argument("--runner", default=None, choices=["local", "pool", "ray"],
                   help="where items are processed: local (this process), pool (a process per core) or ray (a Ray"
                        " cluster, `pip install nels[scale]`); default $NELS_RUNNER or local")
    s.add_argument("--processes", type=int, default=None, metavar="N",
                   help="pool runner: worker processes (default: one per core); ray runner: actors (default: the"
                        " cluster's CPUs / --ray-cpus-per-worker)")
    s.add_argument("--ray-address", default=None, metavar="HOST:PORT|auto|local",
                   help="ray runner: the cluster's head; default $RAY_ADDRESS, else (auto) the cluster `ray start`"
                        " runs on this machine, else (local) a Ray instance started for this command")
    s.add_argument("--ray-cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="ray runner: CPUs each actor reserves (and its torch threads)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nels", description="NELS, a Never-Ending Learner of Sounds.")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="library folder (default: $NELS_LIBRARY, else ./nels-library)")
    p.add_argument("--catalogue", default=None, metavar="URI", help=CATALOGUE_HELP)
    p.add_argument("--version", action="version", version="nels 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("ingest", help="add files, folders, URLs or URL-list files to the library")
    s.add_argument("inputs", nargs="+", metavar="PATH_OR_URL",
                   help="audio files, folders (searched recursively), URLs, or text files listing URLs")
    s.add_argument("--model", default=None, help="encoder: default (shipped CNN), baseline, yamnet[:FILE] (see 'nels models'), or a model folder")
    s.add_argument("--max-duration", type=float, default=None, metavar="SEC", help="skip items longer than this")
    s.add_argument("--max-items", type=int, default=None, help="stop after this many new items")
    s.add_argument("--rate-limit", type=float, default=None, metavar="PER_SEC", help="max downloads per second")
    s.add_argument("--in-place", "--link", dest="in_place", action="store_true",
                   help="keep local files where they are: the library records each file's path, size, time and"
                        " SHA-256 instead of copying it (downloads are still stored); 'nels stats' and 'nels check'"
                        " report originals that were moved or changed, 'nels remove' never deletes them")
    _runner_arguments(s)
    s.add_argument("--retries", type=int, default=3, help="attempts per failing item across runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.ingest:cli_ingest")

    s = sub.add_parser("crawl", help="search YouTube through yt-dlp and ingest what it finds")
    s.add_argument("queries", nargs="+", metavar="QUERY", help="what to search YouTube for, e.g. \"dog barking\"")
    s.add_argument("--per-query", type=int, default=10, metavar="N", help="videos to take per query (default 10)")
    s.add_argument("--model", default=None, help="encoder of a new library (as for ingest); an existing library"
                                                 " keeps its own")
    s.add_argument("--max-duration", type=float, default=600.0, metavar="SEC",
                   help="skip videos longer than this (default 600)")
    s.add_argument("--max-items", type=int, default=None, metavar="N", help="stop after this many new items")
    s.add_argument("--rate-limit", type=float, default=0.5, metavar="PER_SEC",
                   help="max downloads per second (default 0.5: be polite to the site)")
    _runner_arguments(s)
    s.add_argument("--retries", type=int, default=3, help="attempts per failing item across runs (default 3)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.ingest:cli_crawl")

    s = sub.add_parser("search", help="find sounds by text, by example audio, or both")
    s.add_argument("text", nargs="?", default=None, help="what to look for, e.g. \"waves on a beach\"")
    s.add_argument("--audio", default=None, metavar="FILE", help="query by example: a sound file")
    s.add_argument("--start", type=float, default=None, help="query audio: start (s)")
    s.add_argument("--end", type=float, default=None, help="query audio: end (s)")
    s.add_argument("--mode", default=None, choices=["linguistic", "acoustic", "joint", "fused"],
                   help="how to compare (default: fused, every mode that applies; see the README)")
    s.add_argument("-k", type=int, default=10, metavar="K", help="results per page (default 10)")
    s.add_argument("--page", type=int, default=1, metavar="N", help="which page of K results (default 1)")
    s.add_argument("--label", default=None, help="only results tagged with this label")
    s.add_argument("--source", default=None, help="only results whose source URL/path contains this")
    s.add_argument("--min-duration", type=float, default=None, metavar="SEC", help="only clips at least this long")
    s.add_argument("--max-duration", type=float, default=None, metavar="SEC", help="only clips at most this long")
    s.add_argument("--server", default=None, metavar="URL",
                   help="ask this running 'nels serve' (default: the one serving this library, if any)")
    s.add_argument("--local", action="store_true", help="search in this process even when a server runs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.search:cli_search")

    s = sub.add_parser("tag", help="sound events of a file, with start and end times")
    s.add_argument("file", help="an audio file (any format FFmpeg reads)")
    s.add_argument("--model", default=None, help="encoder: default (the shipped CNN), yamnet, or a model folder")
    s.add_argument("--threshold", type=float, default=0.3, metavar="P",
                   help="report a label where its probability is at least P (default 0.3)")
    s.add_argument("--max-gap", type=float, default=1.0, metavar="SEC",
                   help="an event bridges a dropout of at most this long (default 1 s)")
    s.add_argument("--min-duration", type=float, default=0.0, metavar="SEC",
                   help="drop events shorter than this (default 0: keep every event)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.search:cli_tag")

    s = sub.add_parser("stats", help="what the library holds, and what failed")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.library:cli_stats")

    s = sub.add_parser("check", help="verify every clip's media: originals kept in place (--in-place) that were"
                                     " moved, deleted or changed, and files missing from the media folder")
    s.add_argument("--hash", action="store_true",
                   help="read every file and compare its SHA-256 with the clip's (default: a file whose size and"
                        " time are as recorded is taken as unchanged)")
    s.add_argument("--update", action="store_true",
                   help="index each changed original again, as it is now (a new clip; the old one is removed)")
    s.add_argument("--forget-missing", action="store_true",
                   help="remove the clips whose original is missing (after a move, prefer 'nels ingest --in-place"
                        " NEW_PATH', which keeps the clip)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.check:cli_check")

    s = sub.add_parser("remove", help="remove clips (by id) from the library")
    s.add_argument("clip_ids", nargs="+", type=int, metavar="CLIP_ID", help="clip ids (as search and stats show)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.library:cli_remove")

    s = sub.add_parser("reindex", help="re-encode every clip with another model (e.g. a newer CNN)")
    s.add_argument("--model", default=None, metavar="SPEC",
                   help="the model to re-encode with; without it, the library's own model re-encodes only the clips"
                        " made by another model or other weights (and says so)")
    s.add_argument("--yes", action="store_true",
                   help="go ahead without asking when the re-index drops classes or a vector space (the joint space)")
    _runner_arguments(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.library:cli_reindex")

    s = sub.add_parser("train", help="train the sound-event CNN (or, with --backbone, a head on a pretrained"
                                     " backbone) on a labelled dataset")
    s.add_argument("--dataset", required=True, metavar="DIR", help="the labelled dataset (see --format)")
    s.add_argument("--backbone", default=None, metavar="SPEC",
                   help="train a classifier head on this backbone's window embeddings instead of the CNN"
                        " (e.g. yamnet; minutes on a CPU); --hparams then sets the head's hyper-parameters;"
                        " with --add: which of the library's models the classes go beside")
    s.add_argument("--add", action="store_true",
                   help="add the dataset's classes (DIR/<class>/*.wav, one class is enough) beside the library's model:"
                        " every old class and the joint space keep working; prints the 'nels reindex' that applies it")
    s.add_argument("--apply", action="store_true", help="with --add: re-index the library with the added classes now")
    s.add_argument("--format", default=None, choices=["esc50", "folders"],
                   help="esc50: the ESC-50 layout (meta/esc50.csv + audio/); folders: one folder of audio per class"
                        " (default: esc50; folders with --add)")
    s.add_argument("--exclude-fold", type=int, default=None, metavar="K",
                   help="hold this fold out (esc50): it is never seen in training")
    s.add_argument("--out", default=None, metavar="PATH", help="model folder to write")
    s.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's hyper-parameters)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--cache", default=None, metavar="DIR", help="feature cache folder")
    s.add_argument("--arch", default=None, metavar="JSON", help='CNN shape, e.g. \'{"widths": [32, 64, 128, 256]}\'')
    s.add_argument("--hparams", default=None, metavar="JSON",
                   help='training hyper-parameters over the defaults, e.g. \'{"lr": 0.002, "precision": "fp32"}\'')
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.train:cli_train")

    s = sub.add_parser("train-joint", help="train the cross-modal joint space (audio tower + text tower)")
    s.add_argument("--dataset", required=True, metavar="DIR", help="the labelled dataset (see --format)")
    s.add_argument("--format", default="esc50", choices=["esc50", "folders"],
                   help="esc50: the ESC-50 layout (meta/esc50.csv + audio/); folders: one folder of audio per class")
    s.add_argument("--exclude-fold", type=int, default=None, metavar="K", help="hold this fold out (esc50): it is never seen in training")
    s.add_argument("--model", default=None, help="the acoustic model whose embeddings the audio tower reads")
    s.add_argument("--loss", default="both", choices=["contrastive", "infonce", "both"],
                   help="'both' trains each and keeps the one with the better validation MAP@3")
    s.add_argument("--vocabulary", default=None, metavar="FILE", help="class descriptions and synonyms (JSON)")
    s.add_argument("--phrases", default=None, metavar="FILE",
                   help="extra training phrasings per class (default: the shipped ones; 'none' for the vocabulary only)")
    s.add_argument("--out", default=None, metavar="PATH", help="joint model folder to write (default: <model>/joint)")
    s.add_argument("--epochs", type=int, default=80, help="training epochs (default 80)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.train:cli_train_joint")

    s = sub.add_parser("evaluate", help="measure classification, retrieval, joint space or learning")
    s.add_argument("what", nargs="?", default="classification",
                   choices=["classification", "retrieval", "joint", "learning"], help="what to measure (default"
                                                                                 " classification)")
    s.add_argument("--dataset", default=None, metavar="DIR", help="the labelled dataset (see --format)")
    s.add_argument("--format", default="esc50", choices=["esc50", "folders", "realworld"],
                   help="realworld: labels.csv (file,label,esc50_class), retrieval and classification only")
    s.add_argument("--fold", type=int, default=1, help="the fold measured (esc50; default 1, held out from the shipped model)")
    s.add_argument("--model", default=None, help="the model measured (default: the shipped CNN)")
    s.add_argument("--out", default=None, metavar="DIR", help="where reports and PNGs go")
    s.add_argument("--seed", type=int, default=0, help="learning: the pool's random seed")
    s.add_argument("--cache", default=None, metavar="DIR", help="feature cache folder")
    s.add_argument("--pooling", default=None,
                   choices=["segments-mean-prob", "segments-mean-logit", "whole", "windows-mean-prob",
                            "windows-mean-logit"],
                   help="classification: how a clip prediction is made (default: the model's own, from model.json;"
                        " windows-*: a head on a backbone)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.evaluate:cli_evaluate")

    s = sub.add_parser("learn", help="the never-ending loop: self-train on the library's crawled audio")
    s.add_argument("--dataset", required=True, metavar="DIR", help="labelled seed + test data")
    s.add_argument("--format", default="esc50", choices=["esc50", "folders"],
                   help="esc50: the ESC-50 layout (meta/esc50.csv + audio/); folders: one folder of audio per class")
    s.add_argument("--test-fold", type=int, default=1, help="the fold the loop is measured on (never trained on; default 1)")
    s.add_argument("--strategy", default="clarity+semantic",
                   choices=["threshold", "calibrated", "clarity", "clarity+semantic"],
                   help="how crawled clips are chosen as new labels (default clarity+semantic; see the README)")
    s.add_argument("--iterations", type=int, default=5, help="learning iterations (default 5)")
    s.add_argument("--cap", type=int, default=5, help="max clips selected per class per iteration")
    s.add_argument("--patience", type=int, default=2, help="stop after this many iterations with no class improving")
    s.add_argument("--run", default=None, help="run name (re-use it to resume)")
    s.add_argument("--add-class", default=None, metavar="NAME", help="a new class, bootstrapped from --query")
    s.add_argument("--query", default=None, help="crawl query for --add-class")
    s.add_argument("--per-query", type=int, default=20, help="with --add-class: videos to crawl for the new class (default 20)")
    s.add_argument("--apply", action="store_true", help="re-index the library with the new model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func="nels.cli.learn:cli_learn")

    s = sub.add_parser("serve", help="serve the website and JSON API")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only;"
                                                        " 0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="server processes (default: one per core, at most 4)")
    s.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="Host names to answer, comma-separated, e.g. sounds.example.org (a defence against DNS"
                        " rebinding); default $NELS_ALLOWED_HOSTS, else loopback names and --host; '*': any")
    s.set_defaults(func="nels.cli.serve:cli_serve")

    s = sub.add_parser("demo", help="build a demo library (ESC-50 or synthetic) and serve it")
    s.add_argument("--no-serve", action="store_true", help="build only, then run one search")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to serve on (default 8000)")
    s.add_argument("--download", action="store_true", help="download ESC-50 (~600 MB) when it is not on disk")
    s.add_argument("--json", action="store_true",
                   help="print what was built and the example search as JSON (implies --no-serve)")
    s.set_defaults(func="nels.demo:cli_demo")

    s = sub.add_parser("models", help="pretrained models: fetch, add a local copy, list what is installed")
    ms = s.add_subparsers(dest="models_command", metavar="ACTION")
    ms.required = True
    m = ms.add_parser("fetch", help="download a model's official file (SHA-256 checked, resumable)")
    m.add_argument("name", help="yamnet, audioset-ontology")
    m.add_argument("--url", default=None, help="download from this URL instead of the official one (same hash check)")
    m.add_argument("--force", action="store_true", help="download again even when installed")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func="nels.cli.models:cli_fetch")
    m = ms.add_parser("add", help="install a local copy of a model's file (SHA-256 checked)")
    m.add_argument("name", help="the model (see 'nels models list')")
    m.add_argument("path", metavar="PATH", help="the file, or a folder holding it")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func="nels.cli.models:cli_add")
    m = ms.add_parser("list", help="models NELS knows: installed or not, size, classes, licence")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func="nels.cli.models:cli_list")

    from nels.cli.vocabulary import add_vocabulary_parser

    add_vocabulary_parser(sub)

    from nels.cli.run import add_run_parsers

    add_run_parsers(sub)
    return p


def _options_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept `--library DIR` after the subcommand too (`nels search x --library L`), and describe `--json`
    where a command left it bare. Walks every subcommand, whoever registered it."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sp in set(action.choices.values()):
            if "--library" not in sp._option_string_actions:
                sp.add_argument("--library", default=argparse.SUPPRESS, metavar="DIR",
                                help="library folder (default: $NELS_LIBRARY, else ./nels-library)")
            if "--catalogue" not in sp._option_string_actions:
                sp.add_argument("--catalogue", default=argparse.SUPPRESS, metavar="URI", help=CATALOGUE_HELP)
            for a in sp._actions:
                if a.help is None and "--json" in a.option_strings:
                    a.help = "print the result as JSON"
            _options_everywhere(sp)


def _check_files(args) -> None:
    """Checks that need no model, run before a command's handler imports anything heavy: a missing input file
    is a usage error in milliseconds, not after the models load."""
    from pathlib import Path

    if getattr(args, "command", None) == "tag":
        f = Path(args.file).expanduser()
        if not f.exists():
            raise NelsError(f"{args.file}: no such file")
        if f.is_dir():
            raise NelsError(f"{args.file}: a folder (tag one file; 'nels ingest' takes folders)")


def _resolve(ref: str):
    import importlib

    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _options_everywhere(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed (a trained model records its command)
    if args.library is None:
        args.library = _default_library()
    if args.catalogue:  # every Library of this command, and the processes it starts, open this catalogue
        os.environ[config.CATALOGUE.env] = args.catalogue
    try:
        _check_files(args)
        return int(_resolve(args.func)(args) or 0)
    except NelsError as exc:
        print(f"nels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nels: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader went away (`nels ... | head`): stop quietly, like any Unix tool (no traceback, and none at
    exit when Python flushes stdout into the closed pipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the closed pipe


if __name__ == "__main__":
    sys.exit(main())
