"""``domainfm evaluate`` arguments: the argparse flags and the bridge to :func:`domainfm.eval.evaluate`.

Domain options given as flags (``--mpp 0.5``) become ``data.options`` overrides, parsed by the one
option parser of the CLI (:func:`domainfm.config.parse_option_flags`).
"""

from __future__ import annotations

import json

from domainfm.config import parse_option_flags
from domainfm.errors import ConfigError, unknown_choice
from domainfm.eval.evaluate import evaluate
from domainfm.eval.report import EvalResult, render_markdown
from domainfm.models.encoder import GLOBAL_POOLS
from domainfm.registry import get_domain
from domainfm.train.checkpoint import load_card
from domainfm.utils import parse_list


def add_evaluate_arguments(parser) -> None:
    """Add ``evaluate``'s arguments to an ``argparse`` (sub)parser (``checkpoint`` only if not there yet).

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_evaluate_arguments(p)
        >>> a = p.parse_args(["ck", "--data", "d", "--protocol", "knn", "--fractions", "0.1,1"])
        >>> a.protocol, a.fractions, a.seeds
        ('knn', '0.1,1', 3)
    """
    dests = {a.dest for a in parser._actions}
    if "checkpoint" not in dests:
        parser.add_argument("checkpoint", help="checkpoint folder (model.safetensors + card.json)")
    parser.add_argument("--data", default=None, help="labelled data (the domain's data.path)")
    parser.add_argument(
        "--protocol", default="linear", help="linear | knn | fewshot | finetune | lora, or a comma list (linear,knn)"
    )
    parser.add_argument("--fractions", default="0.01,0.1,1", help="label fractions, comma separated (0.01 = 1%%)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per fraction")
    parser.add_argument(
        "--baseline",
        default="random",
        help="random | supervised | CKPT2 | random,supervised,CKPT2 | none "
        "(supervised: a network trained from scratch on the same labels)",
    )
    parser.add_argument("--out", default=None, help="output folder for report.json, report.md, plots")
    parser.add_argument("--exist-ok", action="store_true", help="replace a report already in --out")
    parser.add_argument(
        "--test-split", default="test", help="split to score on (test; val for an in-distribution check)"
    )
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours")
    parser.add_argument("--shots", default="1,5,10", help="few-shot: shots per class, comma separated")
    parser.add_argument("--episodes", type=int, default=5, help="few-shot: episodes per seed")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: where the model loads)")
    parser.add_argument("--max-train", type=int, default=None, help="cap on training items (quick runs)")
    parser.add_argument("--max-test", type=int, default=None, help="cap on test items (quick runs)")
    parser.add_argument("--epochs", type=int, default=None, help="finetune/lora: epochs")
    parser.add_argument("--lr", type=float, default=None, help="finetune/lora: peak learning rate")
    parser.add_argument("--layer-decay", type=float, default=None, help="finetune: layer-wise LR decay")
    parser.add_argument("--lora-rank", type=int, default=None, help="lora: rank")
    parser.add_argument(
        "--pool",
        default=None,
        choices=GLOBAL_POOLS,
        help="pooling of every compared encoder (token+avg: class token and patch mean, DINO's linear eval)",
    )
    if "overrides" not in dests and "sets" not in dests:
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="config override, e.g. data.options.x=1 (repeatable)",
        )


def _option_overrides(checkpoint, rest) -> list[str]:
    """Leftover ``--foo-bar VALUE`` CLI flags -> ``data.options.foo_bar=VALUE`` for the checkpoint's domain."""
    rest = list(rest or ())
    if not rest:
        return []
    domain = load_card(checkpoint).get("domain", "synthetic")
    options = parse_option_flags(rest, get_domain(domain).Options, f"evaluate (domain {domain!r})")
    return [f"data.options.{key}={json.dumps(value)}" for key, value in options.items()]


#: the splits a domain scores on (Domain.dataset): anything else would fall back to a split of train
TEST_SPLITS = ("test", "val")


def check_evaluate_args(args) -> None:
    """Flag values evaluate cannot use, refused in one line naming the flag before any data is read.

    Example:
        >>> import argparse
        >>> check_evaluate_args(argparse.Namespace(n_boot=-5))
        Traceback (most recent call last):
        ...
        domainfm.errors.ConfigError: --n-boot must be >= 1, got -5
    """
    minimum = {"n_boot": 1, "k": 1, "seeds": 1, "episodes": 1, "batch_size": 1, "max_train": 1, "max_test": 1}
    minimum.update({"epochs": 1, "lora_rank": 1})
    for key, low in minimum.items():
        value = getattr(args, key, None)
        if value is not None and value < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {low}, got {value}")
    split = getattr(args, "test_split", "test")
    if split not in TEST_SPLITS:
        raise ConfigError("--test-split: " + unknown_choice("split", split, TEST_SPLITS))
    shots = parse_list(str(getattr(args, "shots", "1,5,10")), int)
    if any(s < 1 for s in shots):
        raise ConfigError(f"--shots must be >= 1 per class, got {getattr(args, 'shots', None)}")


def evaluate_from_args(args, rest=()) -> EvalResult:
    """Run :func:`evaluate` from parsed :func:`add_evaluate_arguments` args; print the markdown report.

    ``rest`` are leftover ``--option VALUE`` flags: the checkpoint's domain options.
    """
    ft = {
        k: v
        for k, v in (
            ("epochs", getattr(args, "epochs", None)),
            ("lr", getattr(args, "lr", None)),
            ("layer_decay", getattr(args, "layer_decay", None)),
            ("lora_rank", getattr(args, "lora_rank", None)),
        )
        if v is not None
    }
    check_evaluate_args(args)
    shots = parse_list(str(getattr(args, "shots", "1,5,10")), int)
    overrides = list(getattr(args, "overrides", None) or getattr(args, "sets", None) or [])
    overrides += _option_overrides(args.checkpoint, rest)
    result = evaluate(
        args.checkpoint,
        data=args.data,
        protocol=args.protocol,
        fractions=args.fractions,
        seeds=args.seeds,
        baseline=args.baseline,
        out=args.out,
        overrides=overrides,
        k=args.k,
        shots=shots,
        episodes=args.episodes,
        n_boot=args.n_boot,
        batch_size=args.batch_size,
        device=args.device,
        max_train=args.max_train,
        max_test=args.max_test,
        finetune_kwargs=ft,
        test_split=getattr(args, "test_split", "test"),
        pool=getattr(args, "pool", None),
        exist_ok=bool(getattr(args, "exist_ok", False)),
    )
    print(render_markdown(result))
    if result.paths:
        print(f"wrote {result.paths['markdown'].parent}")
    return result


def run_evaluate_from_args(args, rest=()) -> int:
    """CLI entry: :func:`evaluate_from_args`, returning the exit status (0)."""
    evaluate_from_args(args, rest)
    return 0
