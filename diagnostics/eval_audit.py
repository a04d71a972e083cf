"""``python -m diagnostics.eval_audit``: audit the evaluation protocol before blaming the model.

With no arguments it audits the shipped noise-conditioned SGMSE+ checkpoint on held-out
synthetic mixtures: the reference protocol (N = 30, one corrector step, snr 0.5, w = 1, EMA
weights) against N = 10 and 50, no corrector, and the raw weights, all on the same examples with
the same sampler noise; plus the unprocessed-input floor, the clean-vs-clean ceiling and the
agreement of the metric code with pesq / pystoi / a float64 SI-SDR.

    python -m diagnostics.eval_audit
    python -m diagnostics.eval_audit --checkpoint uncond --steps 10,30,50,100 --snr 0.33,0.5
    python -m diagnostics.eval_audit --target mypkg.targets:make_target --metrics si_sdr

``FACTORY`` is called with no arguments (under ``torch.manual_seed(--seed)``) and returns a
``diagnostics.EvalTarget``. Writes report.json, report.md, pareto.png and TensorBoard logs under
``--out`` (default ``runs/eval_audit/<time>/``) and prints the findings.

Exit status: 0 when the audit completed (whatever it found); 2 for bad arguments or input (an
unknown metric, a step count <= 0, a target without a sampler, ...) with one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["load_eval_target", "main"]

_PROG = "python -m diagnostics.eval_audit"
# default grids (the reference's own value is in each grid and is not re-run)
_GRIDS: dict[str, str] = {"steps": "10,30,50", "corrector_steps": "0,1", "weights": "ema,raw"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"eval_audit: error: {message} (see --help)\n")
        raise SystemExit(2)


class _BadInput(Exception):
    """Bad arguments or target (message is the stderr line)."""


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=_PROG,
        description="Audit an evaluation protocol before blaming the model. Runs a reference "
        "protocol and one-setting-at-a-time variants (sampler steps, corrector steps, corrector "
        "snr, guidance scale, EMA vs raw weights) on the same examples with the same sampler "
        "noise, and reports each variant's metrics (mean, bootstrap 95% CI, n), its paired "
        "delta to the reference with a bootstrap CI, and seconds per example. Also checks the "
        "evaluation itself: metrics of the unprocessed input (floor), of the clean reference "
        "against itself (ceiling), and agreement of the metric functions with reference "
        "implementations (pesq, pystoi, a float64 SI-SDR). Flags EMA identical to raw, EMA not "
        "loaded and a large EMA-raw gap, and states findings in words with numbers. With no "
        "arguments: the shipped noise-conditioned SGMSE+ on held-out synthetic mixtures.",
        epilog="Outputs under --out: report.json, report.md, pareto.png, tensorboard/. Exit "
        "status: 0 when the audit completed (whatever it found); 2 for bad arguments or input "
        "with one line on stderr. Examples: %(prog)s | %(prog)s --checkpoint uncond --steps "
        "10,30,50,100 | %(prog)s --target path/to/file.py:make_target --metrics si_sdr",
    )
    p.add_argument(
        "--target",
        metavar="MODULE:FACTORY",
        help="MODULE:FACTORY or path/to/file.py:FACTORY returning a diagnostics.EvalTarget "
        "(default: the embedded SGMSE+ target)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="for the embedded target: cond (default), uncond, or a path to a models.sgmse "
        "checkpoint",
    )
    p.add_argument("--steps", help=f"sampler steps N to try (default {_GRIDS['steps']})")
    p.add_argument(
        "--corrector-steps",
        help=f"corrector steps per step to try (default {_GRIDS['corrector_steps']})",
    )
    p.add_argument("--snr", help="corrector snr values to try (default: the reference's only)")
    p.add_argument("--guidance", help="guidance scales w to try (default: the reference's only)")
    p.add_argument("--weights", help=f"named weights to try (default {_GRIDS['weights']})")
    p.add_argument(
        "--reference",
        metavar="KEY=VALUE,...",
        help="override the reference protocol, e.g. steps=50,corrector_steps=0",
    )
    p.add_argument(
        "--metrics",
        help="comma-separated metrics (default: the target's, or si_sdr,pesq,estoi); the first "
        "one drives the findings",
    )
    p.add_argument("--device", help="embedded target: torch device, e.g. cuda (default cpu)")
    p.add_argument("--examples", type=int, help="embedded target: number of examples (default 6)")
    p.add_argument("--seconds", type=float, help="embedded target: clip seconds (default 1.0)")
    p.add_argument(
        "--agreement-n",
        type=int,
        default=4,
        help="examples on which the metrics are compared with reference implementations",
    )
    p.add_argument("--out", help="output folder (default runs/eval_audit/<time>/)")
    p.add_argument(
        "--tensorboard", metavar="DIR", help="TensorBoard folder (default OUT/tensorboard)"
    )
    p.add_argument(
        "--doc",
        metavar="FILE.md",
        help="also write the findings into FILE.md between <!-- eval_audit:begin --> and "
        "<!-- eval_audit:end --> (appended when absent)",
    )
    p.add_argument(
        "--doc-results",
        default="eval_audit_doc",
        metavar="NAME",
        help="results file (FILE.md's folder/results/NAME.json) holding the block's figures, "
        "which the block quotes through <!-- fig --> markers (default eval_audit_doc)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_eval_target(spec: str, seed: int = 0) -> Any:
    """``MODULE:FACTORY`` or ``path/file.py:FACTORY`` called with no arguments under
    ``torch.manual_seed(seed)``; must return a ``diagnostics.EvalTarget``.

    Raises:
        _BadInput: the module, the factory or its result is wrong (message = the stderr line).
    """
    import torch

    from diagnostics._eval_audit import EvalTarget

    if ":" not in spec:
        raise _BadInput(f"--target {spec!r}: expected MODULE:FACTORY or path/to/file.py:FACTORY")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            path = Path(where)
            if not path.is_file():
                raise _BadInput(f"--target {spec!r}: file {where!r} not found")
            mod_name = f"_torchdx_eval_target_{path.stem}"
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            assert mspec is not None and mspec.loader is not None, f"cannot load {path}"
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            sys.path.insert(0, str(path.parent.resolve()))
            try:
                mspec.loader.exec_module(module)
            finally:
                sys.path.pop(0)
        else:
            module = importlib.import_module(where)
    except _BadInput:
        raise
    except Exception as e:
        raise _BadInput(
            f"--target {spec!r}: importing {where!r} failed: {type(e).__name__}: {e}"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise _BadInput(f"--target {spec!r}: {where!r} has no callable {name!r}")
    torch.manual_seed(seed)
    try:
        target = factory()
    except Exception as e:
        raise _BadInput(f"--target {spec!r}: the factory raised {type(e).__name__}: {e}") from None
    if not isinstance(target, EvalTarget):
        hint = (
            " (an AblationTarget has no protocol sampler)"
            if type(target).__name__ == "AblationTarget"
            else ""
        )
        raise _BadInput(
            f"--target {spec!r}: the factory returned {type(target).__name__}, not a "
            f"diagnostics.EvalTarget with sample(model, batch, generator, **protocol){hint}"
        )
    if target.sample is None:
        raise _BadInput(
            f"--target {spec!r}: the EvalTarget has no sampler; set sample(model, batch, "
            "generator, **protocol) -> estimate"
        )
    return target


def _parse_list(flag: str, text: str, kind: type) -> list[Any]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise _BadInput(f"{flag} {text!r}: empty list")
    out = []
    for s in items:
        try:
            v = kind(s)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise _BadInput(f"{flag} {text!r}: {s!r} is not {what}") from None
        if flag == "--steps" and v <= 0:
            raise _BadInput(f"--steps {text!r}: step count {v} must be >= 1")
        if flag == "--corrector-steps" and v < 0:
            raise _BadInput(f"--corrector-steps {text!r}: {v} must be >= 0")
        if flag == "--snr" and v <= 0:
            raise _BadInput(f"--snr {text!r}: {v:g} must be > 0")
        out.append(v)
    return out


_KINDS: dict[str, type] = {
    "steps": int,
    "corrector_steps": int,
    "snr": float,
    "guidance": float,
    "weights": str,
}


def _grids(args: argparse.Namespace, reference: dict[str, Any]) -> dict[str, list[Any]]:
    grids: dict[str, list[Any]] = {}
    for key, kind in _KINDS.items():
        flag = "--" + key.replace("_", "-")
        given = getattr(args, key)
        if given is None:
            if key in _GRIDS and key in reference:
                grids[key] = _parse_list(flag, _GRIDS[key], kind)
            continue
        if key not in reference:
            raise _BadInput(
                f"{flag}: the target's reference protocol has no {key!r} setting (its sampler "
                f"takes {', '.join(k for k in reference if k != 'weights') or 'nothing'})"
            )
        grids[key] = _parse_list(flag, given, kind)
    return grids


def _reference_overrides(text: str | None, reference: dict[str, Any]) -> dict[str, Any]:
    if not text:
        return reference
    out = dict(reference)
    for item in text.split(","):
        if "=" not in item:
            raise _BadInput(f"--reference {text!r}: {item!r} is not KEY=VALUE")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in _KINDS:
            raise _BadInput(f"--reference {text!r}: unknown key {k!r}; valid: {', '.join(_KINDS)}")
        out[k] = _parse_list(f"--{k.replace('_', '-')}", v, _KINDS[k])[0]
    return out


def _threads(n: int | None) -> str:
    """--threads, else 1 thread when the load average exceeds the cores (spinning OpenMP
    threads on an oversubscribed machine make every call several times slower)."""
    import torch

    if n is not None:
        torch.set_num_threads(max(1, n))
        return f"{torch.get_num_threads()} (--threads)"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    cores = os.cpu_count() or 1
    if load > cores and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        return f"1 (load average {load:.1f} > {cores} cores)"
    return str(torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        import torch

        threads = _threads(args.threads)
        from diagnostics._eval_audit import (
            EvalAuditError,
            make_variants,
            run_audit,
            sgmse_eval_target,
            write_doc_block,
            write_report,
        )

        if args.agreement_n < 0:
            raise _BadInput(f"--agreement-n {args.agreement_n}: must be >= 0")
        metrics = None
        if args.metrics is not None:
            metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
            if not metrics:
                raise _BadInput(f"--metrics {args.metrics!r}: empty list")
        # cheap argument checks before the (slow) target is built
        for key in ("steps", "corrector_steps", "snr", "guidance"):
            if getattr(args, key) is not None:
                _parse_list("--" + key.replace("_", "-"), getattr(args, key), _KINDS[key])
        if metrics is not None and args.target is None:
            from diagnostics._eval_audit._metrics import BUILTIN_METRICS

            bad = [m for m in metrics if m not in BUILTIN_METRICS]
            if bad:
                raise _BadInput(
                    f"--metrics: unknown metric {', '.join(bad)}; choose from "
                    f"{','.join(BUILTIN_METRICS)}"
                )
        if args.target is not None:
            if args.checkpoint or args.examples or args.seconds or args.device:
                raise _BadInput(
                    "--checkpoint/--examples/--seconds/--device apply to the embedded target only"
                )
            target = load_eval_target(args.target, args.seed)
        else:
            over: dict[str, Any] = {}
            if args.examples is not None:
                if args.examples < 2:
                    raise _BadInput(f"--examples {args.examples}: need at least 2 (for a CI)")
                over.update(n_examples=args.examples, batch_size=min(args.examples, 12))
            if args.seconds is not None:
                if args.seconds < 0.25:
                    raise _BadInput(f"--seconds {args.seconds:g}: need at least 0.25 s (PESQ)")
                over["seconds"] = args.seconds
            if args.device is not None:
                try:
                    torch.empty(0, device=args.device)
                except (RuntimeError, ValueError) as e:
                    raise _BadInput(f"--device {args.device!r}: {str(e).splitlines()[0]}") from None
                over["device"] = args.device
            torch.manual_seed(args.seed)
            target = sgmse_eval_target(args.checkpoint or "cond", **over)
        target.reference = _reference_overrides(args.reference, dict(target.reference))
        variants = make_variants(target.reference, **_grids(args, target.reference))
        t_loaded = time.perf_counter()
        report = run_audit(
            target,
            variants,
            metrics=metrics,
            seed=args.seed,
            agreement_n=args.agreement_n,
            progress=not args.quiet,
        )
    except (_BadInput, EvalAuditError) as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"eval_audit: error: {line}\n")
        return 2
    t_run = time.perf_counter()
    out = Path(args.out) if args.out else Path("runs/eval_audit") / time.strftime("%Y%m%d-%H%M%S")
    write_report(report, out, tensorboard=args.tensorboard)
    command = " ".join(
        ["python -m diagnostics.eval_audit", *map(shlex.quote, argv or sys.argv[1:])]
    )
    if args.doc:
        write_doc_block(report, args.doc, command=command, results_name=args.doc_results)
    timing = {
        "load_s": round(t_loaded - t0, 2),
        "audit_s": round(t_run - t_loaded, 2),
        "write_s": round(time.perf_counter() - t_run, 2),
        "threads": threads,
        "n_examples": report.n_examples,
        "protocols": 1 + len(report.variants),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    from diagnostics._eval_audit._writers import findings_list, protocol_table

    print(f"eval_audit: {report.target}")
    print("\n".join(protocol_table(report)))
    print("\nfindings:")
    print("\n".join(findings_list(report)))
    print(f"\nreport: {out / 'report.md'} (json, pareto.png, TensorBoard beside it)")
    print(
        f"time: load {timing['load_s']} s, audit {timing['audit_s']} s, write {timing['write_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
