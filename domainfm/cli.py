"""``domainfm pretrain|finetune|embed|predict|evaluate|info|export|demo|list``: a thin layer over :mod:`domainfm.api`.

Domain options become flags: a field ``target_mpp`` of the domain's ``Options`` is ``--target-mpp``.
Errors the user can fix print one line (``error: ...``) and exit with status 2; no traceback.

Example:
    $ domainfm pretrain --domain synthetic --steps 50 --out runs/shapes
    $ domainfm info runs/shapes
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import re
import sys
from pathlib import Path

import yaml

from domainfm import api
from domainfm.config import load_yaml_file, parse_option_flags
from domainfm.errors import ConfigError, DomainFMError
from domainfm.eval import add_evaluate_arguments, run_evaluate_from_args
from domainfm.exported import describe, is_exported, read_card
from domainfm.model import check_card
from domainfm.registry import get_domain, list_domains, list_encoders, list_heads, list_objectives, loaded_domains
from domainfm.store import StoreError, prepare
from domainfm.store.layout import COMPRESSION, COMPRESSIONS
from domainfm.train.checkpoint import load_card, resolve_checkpoint


def _flags(options_cls) -> list[str]:
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(options_cls)]


def _refuse_data_options(rest: list[str], options_cls, command: str) -> None:
    """``embed``/``predict`` read the preprocessing from the card: a flag they do not take is named so."""
    taken = _flags(options_cls)
    given = [t.partition("=")[0] for t in rest if t.startswith("--")]
    unknown = [g for g in given if g not in taken]
    if unknown:
        raise ConfigError(
            f"{command} takes the preprocessing from the checkpoint card; it does not take "
            f"{', '.join(unknown)} (options it takes: {', '.join(taken) or 'none'})"
        )


def _common_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data folder or manifest CSV/JSON (the domain decides how to read it)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--out", help="run folder (checkpoints, metrics.csv, tensorboard/)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set objective.mask_ratio=0.6 (repeatable)",
    )


def _exist_ok_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exist-ok", action="store_true", help="replace an existing output (atomically)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domainfm",
        description="Domain-specialized vision foundation models.",
        epilog="Domain options are flags too (e.g. --target-mpp 0.5, --sensor sentinel2 --bands B02,B03,B04): "
        "`domainfm list` shows each domain's flags.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="self-supervised pretraining of an encoder")
    p.add_argument("--config", help="YAML config; may also be given right after `pretrain` (optional)")
    p.add_argument("--domain", help="medical | remote_sensing | pathology | synthetic | an installed plugin")
    p.add_argument("--objective", choices=list_objectives())
    p.add_argument("--model", help="vit-tiny | vit-small | vit-base | vit-large")
    p.add_argument("--init", help="start from this checkpoint's encoder (imported or trained): model.init")
    _common_train_flags(p)

    p = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint for a task")
    p.add_argument("checkpoint", help="checkpoint folder or run folder (its latest checkpoint)")
    p.add_argument("--config", help="YAML with changes to the pretraining config")
    p.add_argument("--task", help="classification | multilabel | segmentation | mil (pathology)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    p.add_argument("--lora-rank", type=int, help="parameter-efficient tuning with LoRA of this rank")
    p.add_argument("--labels", help="labels file (e.g. slide-level CSV for MIL)")
    _common_train_flags(p)

    p = sub.add_parser("embed", help="embed every file of a dataset")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="output file (.npz/.h5) or folder (per-slide files)")
    p.add_argument("--batch-size", type=int)
    _exist_ok_flag(p)
    p.add_argument("--resume", action="store_true", help="keep the finished files of a folder of slide features")

    p = sub.add_parser("predict", help="predict on a whole file and write it back in its own format")
    p.add_argument("checkpoint")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, help="where the domain's predict takes one (e.g. pathology tiles)")
    _exist_ok_flag(p)

    p = sub.add_parser("evaluate", help="probe/fine-tune a checkpoint vs a random-init baseline at label fractions")
    p.add_argument("checkpoint")
    add_evaluate_arguments(p)

    p = sub.add_parser("info", help="print a checkpoint's card (or an exported model's: .onnx, .pt2)")
    p.add_argument("checkpoint")

    p = sub.add_parser("export", help="export a checkpoint for deployment (ONNX or torch.export .pt2, card inside)")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the exported file (.onnx or .pt2)")
    p.add_argument("--format", help="onnx | pt2 (default: from --out's suffix)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--fp16", action="store_true", help="half-precision network (the measured difference is printed)")
    _exist_ok_flag(p)

    p = sub.add_parser("demo", help="end-to-end demo on sample data (pretrain, probe, fine-tune)")
    p.add_argument("--domain", default="synthetic")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="fewer steps, for a smoke test")

    p = sub.add_parser("import-weights", help="convert local ViT weights (timm, MAE, DINOv2, TorchGeo) to a checkpoint")
    p.add_argument("src", help=".safetensors, .pth/.pt/.bin (tensors only), or a folder with config.json + weights")
    p.add_argument("--domain", required=True)
    p.add_argument("--out", required=True, help="checkpoint folder to create")
    p.add_argument("--arch", help="timm model name (heads, image size) overriding what the keys say")
    for flag in ("--source-bands", "--source-wavelengths", "--target-bands", "--global-pool", "--key", "--patch-embed"):
        p.add_argument(flag)
    p.add_argument("--img-size", type=int)
    p.add_argument("--patch-depth", type=int, help="3D targets: depth of a patch (the 2D kernel is spread over it)")
    _exist_ok_flag(p)

    p = sub.add_parser("prepare", help="preprocess a dataset once into a chunked zarr store that training streams")
    p.add_argument("--domain", required=True, help="medical | remote_sensing | pathology")
    p.add_argument("--data", required=True, help="what pretrain --data reads: a folder, a manifest, slides, scenes")
    p.add_argument("--out", required=True, help="the store folder (a second run prepares only new or changed files)")
    p.add_argument("--workers", type=int, help="processes (default: the CPU count)")
    p.add_argument("--img-size", type=int, help="data.img_size (the model input the domain sizes samples to)")
    p.add_argument(
        "--compression",
        choices=sorted(COMPRESSIONS),
        default=COMPRESSION,
        help=f"chunk codec (default {COMPRESSION}: faster reads; zstd: a smaller store)",
    )

    sub.add_parser("list", help="list encoders, objectives, heads, domains and each domain's flags")
    return parser


def _updates_from_args(args, options: dict) -> dict:
    upd: dict = {"data": {}, "train": {}, "model": {}, "objective": {}, "finetune": {}}
    if getattr(args, "data", None):
        upd["data"]["path"] = args.data
    for flag, key in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("device", "device")):
        if getattr(args, flag, None) is not None:
            upd["train"][key] = getattr(args, flag)
    if getattr(args, "workers", None) is not None:
        upd["data"]["num_workers"] = args.workers
    if getattr(args, "out", None):
        upd["out"] = args.out
    if getattr(args, "model", None):
        upd["model"]["name"] = args.model
    if getattr(args, "init", None):
        upd["model"]["init"] = args.init
    if getattr(args, "objective", None):
        upd["objective"]["name"] = args.objective
    if getattr(args, "domain", None) and args.command == "pretrain":
        upd["domain"] = args.domain
    for flag in ("task", "num_classes", "lora_rank"):
        if getattr(args, flag, None) is not None:
            upd["finetune"][flag] = getattr(args, flag)
    if getattr(args, "freeze_encoder", False):
        upd["finetune"]["freeze_encoder"] = True
    if options:
        upd["data"]["options"] = options
    return {k: v for k, v in upd.items() if v != {}}


def _pretrain_config(args) -> str | None:
    """The YAML a pretrain run starts from: the one given, or for `--resume --out RUN` the run's own."""
    if args.config is None and args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        return str(Path(args.out) / "config.yaml")
    return args.config


def _domain_of(args) -> str:
    if args.command == "pretrain":
        if args.domain:
            return args.domain
        config = _pretrain_config(args)
        if config:
            try:
                raw = yaml.safe_load(Path(config).read_text()) or {}
            except (OSError, yaml.YAMLError):
                raw = {}
            return raw.get("domain", "synthetic") if isinstance(raw, dict) else "synthetic"
        return "synthetic"
    return (read_card(args.checkpoint) if is_exported(args.checkpoint) else load_card(args.checkpoint))["domain"]


def _config_after_command(argv: list[str]) -> list[str]:
    """``domainfm pretrain CONFIG.yaml ...``: the config may come right after the command (as ``--config``)."""
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] == "pretrain" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        if any(a == "--config" or a.startswith("--config=") for a in argv):
            raise ConfigError(f"pretrain got the config twice ({argv[i + 1]} and --config); give it once, either way")
        argv[i + 1 : i + 2] = ["--config", argv[i + 1]]
    return argv


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _config_after_command(list(sys.argv[1:] if argv is None else argv))
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "resume", False) and getattr(args, "init", None):
        raise ConfigError(
            "--resume continues the run in --out from its own checkpoint; --init starts a new run from another "
            "checkpoint's encoder: give one of them"
        )
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    handler = _COMMANDS.get(args.command, _domain_command)
    return int(handler(args, rest) or 0)


def _list(args, rest) -> int:
    flags, operation_flags = {}, {}
    for name in list_domains():
        try:
            plugin = get_domain(name)
            flags[name] = _flags(plugin.Options)
            operation_flags[name] = {"embed": _flags(plugin.EmbedOptions), "predict": _flags(plugin.PredictOptions)}
        except (ConfigError, TypeError) as exc:  # a broken plugin is listed with its problem
            flags[name] = [f"unavailable: {exc}"]
    listing = {
        "encoders": list_encoders(),
        "objectives": list_objectives(),
        "heads": list_heads(),
        "domains": list_domains(),
        "domain_flags": flags,
        "operation_flags": operation_flags,
    }
    print(json.dumps(listing, indent=2))
    return 0


def _prepare(args, rest) -> int:
    """``domainfm prepare``: the domain's flags are its data options; failed sources are one error line."""
    options = parse_option_flags(rest, get_domain(args.domain).Options, f"domain {args.domain!r}") if rest else {}
    report = prepare(
        args.domain,
        args.data,
        args.out,
        workers=args.workers,
        options=options,
        img_size=args.img_size,
        compression=args.compression,
    )
    if report.failed:
        raise StoreError(args.out, report.failure_text())
    return 0


def _demo(args, rest) -> int:
    print(json.dumps(api.demo(args.domain, args.out, quick=args.quick), indent=2, default=str))
    return 0


_IMPORT_KEYS = (
    "source_bands",
    "source_wavelengths",
    "target_bands",
    "global_pool",
    "key",
    "img_size",
    "patch_depth",
    "patch_embed",
)


def _import_weights(args, rest) -> int:
    options = parse_option_flags(rest, get_domain(args.domain).Options, f"domain {args.domain!r}") if rest else {}
    options.update({k: getattr(args, k) for k in _IMPORT_KEYS if getattr(args, k) is not None})
    ckpt = api.import_weights(args.src, args.domain, args.out, args.arch, exist_ok=args.exist_ok, **options)
    print(f"checkpoint: {ckpt}")
    return 0


def _domain_command(args, rest) -> int:
    """pretrain, finetune, embed and predict: the domain's flags parsed, then the command run."""
    domain_name = _domain_of(args)
    domain = get_domain(domain_name)
    options_cls = {"embed": domain.EmbedOptions, "predict": domain.PredictOptions}.get(args.command, domain.Options)
    if args.command in ("embed", "predict"):
        domain.check_offered(args.command)  # before its flags: an operation not offered says so
        _refuse_data_options(rest, options_cls, args.command)
    owner = (
        f"domain {domain_name!r}"
        if args.command in ("pretrain", "finetune")
        else f"{args.command} of domain {domain_name!r}"
    )
    options = parse_option_flags(rest, options_cls, owner) if rest else {}
    if args.command in ("embed", "predict") and args.batch_size:
        options["batch_size"] = args.batch_size
    label, result = _RUNS[args.command](args, options)
    print(f"{label}: {result}")
    return 0


def _run_pretrain(args, options) -> tuple[str, Path]:
    cfg = api.load_config(_pretrain_config(args), overrides=args.sets, updates=_updates_from_args(args, options))
    return "checkpoint", api.pretrain(cfg, resume=args.resume)


def _run_finetune(args, options) -> tuple[str, Path]:
    updates = _updates_from_args(args, options)
    data = updates.get("data", {}).pop("path", None)
    extra = {"labels": args.labels} if args.labels else {}
    config = _merge_config_file(args.config, updates)
    ckpt = api.finetune(args.checkpoint, data=data, config=config, overrides=args.sets, resume=args.resume, **extra)
    return "checkpoint", ckpt


def _run_embed(args, options) -> tuple[str, Path]:
    exist_ok = "resume" if args.resume else args.exist_ok
    return "embeddings", api.embed(api.load(args.checkpoint), args.data, args.out, exist_ok=exist_ok, **options)


def _run_predict(args, options) -> tuple[str, Path]:
    return "prediction", api.predict(args.checkpoint, args.input, args.out, exist_ok=args.exist_ok, **options)


_RUNS = {"pretrain": _run_pretrain, "finetune": _run_finetune, "embed": _run_embed, "predict": _run_predict}


def _info(path: str) -> int:
    """The card of a checkpoint, or of an exported file (``.onnx``/``.pt2``) after what it takes and gives."""
    if is_exported(path):
        card = read_card(path)
        print("\n".join(f"# {line}" for line in [str(path), *describe(card)]))
    else:
        ckpt = resolve_checkpoint(path)
        card = load_card(ckpt)
        check_card(card, ckpt)  # a bogus domain or encoder section is one line, not a card printed as fine
        print(f"# {ckpt}")
        card = card.to_dict()
    print(json.dumps(card, indent=2))
    return 0


def _export(args, rest: list[str]) -> int:
    if rest:
        raise ConfigError(f"export takes --out, --format, --opset, --fp16 and --exist-ok; got {' '.join(rest)}")
    out = api.export(
        args.checkpoint, args.out, format=args.format, opset=args.opset, fp16=args.fp16, exist_ok=args.exist_ok
    )
    parity = read_card(out)["export"]["parity"]
    precision = "fp16" if args.fp16 else "fp32"
    print(f"exported: {out} (max abs diff to the checkpoint {parity['max_abs_diff']:.2e}, {precision})")
    return 0


def _merge_config_file(path: str | None, updates: dict) -> dict:
    if not path:
        return updates
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    raw = load_yaml_file(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    return raw


# the Python API's errors name Python arguments; the CLI says the same in flags
_CLI_WORDS = (
    (re.compile(r'pass exist_ok="resume" to continue'), "pass --resume to continue"),
    (re.compile(r', exist_ok="overwrite" to start it again,'), ","),
    (re.compile(r'exist_ok="overwrite"'), "a new --out"),
    (re.compile(r"resume=True"), "--resume"),
    (re.compile(r"\bor another out\b"), "or another --out"),
    (re.compile(r"domainfm\.finetune\(checkpoint, task=\.\.\.\)"), "domainfm finetune CHECKPOINT --task ..."),
    (re.compile(r"pass exist_ok=True to replace it"), "pass --exist-ok to replace it"),
    (re.compile(r'exist_ok="resume" to keep what it holds'), "--resume to keep what it holds"),
    (
        re.compile(r"for a fine-tuned checkpoint call model = domainfm\.load\(checkpoint\).*? for features"),
        "use `domainfm embed CHECKPOINT --data DATA --out FILE` for features, or load a fine-tuned checkpoint "
        "in Python (domainfm.load) to run it on arrays",
    ),
    (re.compile(r"domainfm\.embed\(checkpoint, data\)"), "domainfm embed CHECKPOINT --data DATA --out FILE"),
    (re.compile(r" \(data\.options\.\w+ when training\)"), ""),  # the flag is the same for every command
    (re.compile(r"\bfinetune\.num_classes=(\d+)"), r"--num-classes \1"),
    (re.compile(r"\bfinetune\.num_classes\b"), "--num-classes"),
    (re.compile(r"\bdata\.path\b"), "--data"),
    (re.compile(r"(?:(?<=: )|\b(?:embed|predict) )out (?=is |holds |would )"), "--out "),
    (re.compile(r"\b([Cc]hoose )?another out\b"), r"\1another --out"),
)
#: a config key of the domain's options is its flag: data.options.min_tissue -> --min-tissue
_DATA_OPTION = re.compile(r"\bdata\.options\.([a-z][a-z0-9_]*)")
#: a keyword argument named in a message (mpp=VALUE, task="mil", labels=) is the flag of the same name
_KEYWORD = re.compile(r"""(?<![\w.\-\[`'"])([a-z][a-z0-9_]*)=("[^"]*"|'[^']*'|\.\.\.|[^\s,;)]+)?""")


def _installed_domains() -> list:
    """The installed domains (loaded on first use; a plugin that cannot be imported is left out here)."""
    out = list(loaded_domains())
    for name in list_domains():
        try:
            domain = get_domain(name)
        except DomainFMError:
            continue
        if domain not in out:
            out.append(domain)
    return out


@functools.lru_cache(maxsize=1)
def _known_flags() -> set[str]:
    """Every flag of every command, and of every installed domain (their options; an error message is
    translated whichever domain raised it, loaded or not)."""
    flags: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    for domain in _installed_domains():
        for options_cls in (domain.Options, domain.EmbedOptions, domain.PredictOptions):
            flags.update(_flags(options_cls))
    return flags


def _flag_words(message: str) -> str:
    """Python keyword and option names in a message -> the CLI flags of the same names."""
    message = _DATA_OPTION.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
    if "=" not in message:
        return message
    known = _known_flags()

    def flag(m: re.Match) -> str:
        name = "--" + m.group(1).replace("_", "-")
        if name not in known:
            return m.group(0)
        value = (m.group(2) or "").strip("\"'")
        return name if value in ("", "True") else f"{name} {value}"

    return _KEYWORD.sub(flag, message)


def cli_words(message: str) -> str:
    """An API error message in CLI words.

    Example:
        >>> cli_words('runs/x already holds checkpoints; pass exist_ok="resume" to continue that run, '
        ...           'exist_ok="overwrite" to start it again, or another out')
        'runs/x already holds checkpoints; pass --resume to continue that run, or another --out'
        >>> cli_words("pred.tif already exists; pass exist_ok=True to replace it, or another out")
        'pred.tif already exists; pass --exist-ok to replace it, or another --out'
        >>> cli_words('lower data.options.min_tissue, or pass task="mil" with labels="slides.csv" and arch=...')
        'lower --min-tissue, or pass --task mil with --labels slides.csv and --arch ...'
    """
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    return _flag_words(message)


_COMMANDS = {
    "list": _list,
    "info": lambda args, rest: _info(args.checkpoint),
    "export": _export,
    "demo": _demo,
    "evaluate": run_evaluate_from_args,
    "import-weights": _import_weights,
    "prepare": _prepare,
}


def main(argv: list[str] | None = None) -> None:
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        code = run(argv)
    except DomainFMError as exc:
        if verbose:
            raise
        print(f"error: {cli_words(str(exc))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # e.g. `domainfm info RUN | head`
        sys.stderr.close()
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
