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
unknown metric, a step count <= 0, a target without a sampler, an output folder that cannot be
written, a sampler or metric of the target that raises under the reference protocol, ...) with
one line on stderr; 130 when interrupted (Ctrl-C after the reference protocol: the protocols
done so far are written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from contracts.cli import ArgumentParser, TargetSpecError, pick_threads, unwritable
from contracts.cli import load_target as load_spec

__all__ = ["load_eval_target", "main"]

_PROG = "python -m diagnostics.eval_audit"
# default grids (the reference's own value is in each grid and is not re-run)
_GRIDS: dict[str, str] = {"steps": "10,30,50", "corrector_steps": "0,1", "weights": "ema,raw"}


class _BadInput(Exception):
    """Bad arguments or target (message is the stderr line)."""


_DESCRIPTION = (
    "Audit an evaluation protocol before blaming the model. Runs a reference protocol and "
    "one-setting-at-a-time variants (sampler steps, corrector steps, corrector snr, guidance "
    "scale, EMA vs raw weights) on the same examples with the same sampler noise, and reports "
    "each variant's metrics (mean, bootstrap 95% CI, n), its paired delta to the reference "
    "with a bootstrap CI, and seconds per example. Also checks the evaluation itself: metrics "
    "of the unprocessed input (floor), of the clean reference against itself (ceiling), "
    "agreement of the metric functions with reference implementations (pesq, pystoi, a float64 "
    "SI-SDR), and how the sampler ran the model (training mode, the global RNG). Flags EMA "
    "identical to raw, EMA not loaded and a large EMA-raw gap, and states findings in words "
    "with numbers. With no arguments: the shipped noise-conditioned SGMSE+ on held-out "
    "synthetic mixtures."
)
_EPILOG = """\
outputs under --out: report.json, report.md, pareto.png, tensorboard/, timing.json
  (checked to be writable before the audit starts). A variant under which the sampler raises
  is reported as skipped; Ctrl-C after the reference writes the protocols done so far.

exit status: 0 when the audit completed (whatever it found); 2 for bad arguments or input,
  or a sampler/metric of the target that raises under the reference protocol (one line on
  stderr naming where); 130 when interrupted.

examples:
  %(prog)s
  %(prog)s --checkpoint uncond --steps 10,30,50,100 --snr 0.33,0.5
  %(prog)s --target path/to/file.py:make_target --metrics si_sdr --out runs/audit"""


def _parser() -> argparse.ArgumentParser:
    import textwrap

    p = ArgumentParser(
        prog=_PROG,
        description=textwrap.fill(_DESCRIPTION, 79),
        epilog=_EPILOG,
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
        help="examples on which the metrics are compared with reference implementations "
        "(default 4; 0: not compared)",
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
    from diagnostics._eval_audit import EvalTarget

    try:
        target = load_spec(spec, object, seed=seed)
    except TargetSpecError as e:
        raise _BadInput(str(e)) from None
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


def _check_out(flag: str, path: str | Path, *, file: bool = False) -> None:
    """Raise _BadInput now (before a long audit) when ``path`` cannot be written."""
    problem = unwritable(flag, path, file=file)
    if problem is not None:
        raise _BadInput(problem)


def _user_code_line(e: BaseException) -> str | None:
    """One line for an exception the target's own code raised (sampler, metric), else None."""
    import traceback

    from diagnostics._eval_audit._runner import USER_CODE_NOTE

    notes = [n for n in getattr(e, "__notes__", []) if n.startswith(USER_CODE_NOTE)]
    if not notes:
        return None
    frames = traceback.extract_tb(e.__traceback__)
    tool = str(Path(__file__).resolve().parent) + os.sep  # this package's own frames
    own = [
        f
        for f in frames
        if "site-packages" not in f.filename
        and not str(Path(f.filename).resolve()).startswith(tool)
    ]
    at = f" (at {Path(own[-1].filename).name}:{own[-1].lineno})" if own else ""
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{notes[-1][len(USER_CODE_NOTE) :]}: {type(e).__name__}: {msg}{at}"


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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else Path("runs/eval_audit") / time.strftime("%Y%m%d-%H%M%S")
    try:
        import torch

        from diagnostics._eval_audit import (
            EvalAuditError,
            make_variants,
            run_audit,
            sgmse_eval_target,
            write_doc_block,
            write_report,
        )

        if args.threads is not None and args.threads < 1:
            raise _BadInput(f"--threads {args.threads}: must be >= 1")
        threads = pick_threads(args.threads)

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
                if not math.isfinite(args.seconds):
                    raise _BadInput(f"--seconds {args.seconds:g}: expected a finite number")
                if args.seconds < 0.25:
                    raise _BadInput(f"--seconds {args.seconds:g}: need at least 0.25 s (PESQ)")
                over["seconds"] = args.seconds
            if args.device is not None:
                try:
                    dev = torch.device(args.device)
                    if dev.type == "meta":
                        raise _BadInput(
                            f"--device {args.device!r}: meta tensors hold no data to sample with"
                        )
                    if dev.type == "cuda" and not torch.cuda.is_available():
                        raise _BadInput(
                            f"--device {args.device!r}: CUDA is not available on this machine "
                            "(no GPU, or torch built without CUDA); use --device cpu"
                        )
                    torch.empty(0, device=dev)
                except (RuntimeError, ValueError, AssertionError) as e:
                    raise _BadInput(f"--device {args.device!r}: {str(e).splitlines()[0]}") from None
                over["device"] = args.device
            torch.manual_seed(args.seed)
            target = sgmse_eval_target(args.checkpoint or "cond", **over)
        target.reference = _reference_overrides(args.reference, dict(target.reference))
        variants = make_variants(target.reference, **_grids(args, target.reference))
        # where the results go must be writable before the (long) audit, not after it
        _check_out("--out", out)
        if args.tensorboard:
            _check_out("--tensorboard", args.tensorboard)
        if args.doc:
            _check_out("--doc", args.doc, file=True)
            _check_out("--doc", Path(args.doc).parent / "results")
        t_loaded = time.perf_counter()
        report = run_audit(
            target,
            variants,
            metrics=metrics,
            seed=args.seed,
            agreement_n=args.agreement_n,
            progress=not args.quiet,
            variant_errors="skip",
            partial_on_interrupt=True,
        )
    except (_BadInput, EvalAuditError) as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"eval_audit: error: {line}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            "eval_audit: interrupted (Ctrl-C) before the reference protocol and the checks "
            "were done; nothing written\n"
        )
        return 130
    except Exception as e:  # the target's sampler or metric raised: one line naming where
        line = _user_code_line(e)
        if line is None:
            raise
        sys.stderr.write(f"eval_audit: error: {line}\n")
        return 2
    t_run = time.perf_counter()
    command = " ".join(
        ["python -m diagnostics.eval_audit", *map(shlex.quote, argv or sys.argv[1:])]
    )
    try:
        write_report(report, out, tensorboard=args.tensorboard)
        if args.doc:
            write_doc_block(report, args.doc, command=command, results_name=args.doc_results)
    except OSError as e:
        sys.stderr.write(f"eval_audit: error: cannot write the report: {e}\n")
        return 2
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
    if report.interrupted:
        sys.stderr.write(
            f"eval_audit: interrupted (Ctrl-C): wrote the protocols done so far to {out}\n"
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
