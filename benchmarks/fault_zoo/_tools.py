"""Run one tool on one case and score it: detected, localized, message, seconds, steps.

Tools (keys of ``tools`` in the JSON):

* ``torchdx`` -- the torchdx tool a user would reach for, by case kind: contracts
  (``contracts.attach`` / the reference models' own contracts) for shape faults, ``NanWatch``
  (+ ``GradFlow`` over steps) for non-finite faults, ``GradFlow`` for gradient flow,
  ``run_ablation`` for conditioning, the named check for probes. ``via`` says which.
* ``detect_anomaly`` -- ``torch.autograd.detect_anomaly(check_nan=True)`` around the steps.
* ``jaxtyping`` -- jaxtyping + beartype with the same annotations (``@jaxtyped``).
* ``isfinite_hooks`` -- naive forward hooks raising on the first module output that is not
  ``isfinite().all()``.
* ``loss_check`` -- ``torch.isfinite(loss)`` after every step.
* ``plain`` -- no tool: does the faulty code fail on its own?

Anchors run with torchdx contracts off, torchdx tools one at a time, so each column measures one
tool alone. A tool that cannot see a fault's kind is not applicable (``"—"``), never guessed.
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import contracts
from contracts import TorchdxError

from ._cases import AblationCase, Fault, GradCase, ProbeCase, StepCase

__all__ = ["NOT_APPLICABLE", "TOOLS", "run_tool"]

TOOLS = ("torchdx", "detect_anomaly", "jaxtyping", "isfinite_hooks", "loss_check", "plain")
NOT_APPLICABLE = "—"
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _first_line(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _result(detected: bool, localized: bool, message: str, seconds: float, **extra: Any) -> dict:
    out = {"detected": bool(detected), "localized": bool(detected and localized)}
    out["message"] = message if detected else (message or "not detected")
    out["seconds"] = round(seconds, 4)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def not_applicable(why: str) -> dict:
    return {"detected": None, "localized": None, "message": NOT_APPLICABLE, "why": why}


# ----------------------------------------------------------------------------- localization
def _loc_argument(exc: BaseException, expected: dict) -> bool:
    """Shape faults: the error names the expected argument (and axis, when one is expected)."""
    if "argument" not in expected:
        return _loc_names(str(exc), expected)
    arg = getattr(exc, "argument", None)
    if arg is None:  # a torchdx error that is not a ContractError: read its words
        return re.search(rf"\b{re.escape(expected['argument'])}\b", str(exc)) is not None
    if arg != expected["argument"]:
        return False
    return "axis" not in expected or getattr(exc, "axis", None) == expected["axis"]


def _loc_names(message: str, expected: dict) -> bool:
    names = expected.get("names")
    return bool(names) and all(n in message for n in names)


def _code_region(obj: Any) -> tuple[str, int, int] | None:
    """(file, first line, last line) of a class or function's source."""
    try:
        src = inspect.getsourcefile(obj)
        lines, start = inspect.getsourcelines(obj)
    except (TypeError, OSError):
        return None
    return (str(Path(src).resolve()), start, start + len(lines) - 1) if src else None


def _expected_region(case: StepCase, expected: dict) -> tuple[str, int, int] | None:
    if "module" not in expected:
        return None
    if expected["module"] is None:  # the step function's own code
        return _code_region(case.step)
    try:
        mod = case.model.get_submodule(expected["module"])
    except AttributeError:
        return None
    return _code_region(type(mod))


def _trace_points_at(trace: str, region: tuple[str, int, int] | None) -> bool:
    """A forward traceback passes through the expected module's (or step code's) source."""
    if region is None:
        return False
    file, lo, hi = region
    for f, line in re.findall(r'File "([^"]+)", line (\d+)', trace):
        if str(Path(f).resolve()) == file and lo <= int(line) <= hi:
            return True
    return False


# ----------------------------------------------------------------------------- step cases
def _loop(case: StepCase, on_loss: Any = None) -> int:
    """Run the case's steps; returns how many completed. ``on_loss(i, loss)`` after each."""
    for i in range(case.steps):
        loss = case.step(i)
        if on_loss is not None:
            on_loss(i, loss)
        if case.after is not None:
            case.after(i)
    return case.steps


class _Stop(Exception):
    def __init__(self, step: int, message: str, localized: bool) -> None:
        super().__init__(message)
        self.step, self.message, self.localized = step, message, localized


def _step_contracts(case: StepCase, fault: Fault) -> dict:
    handles = []
    t0 = time.perf_counter()
    step = [0]

    def count(i: int, loss: Any) -> None:
        step[0] = i + 1

    try:
        for a in case.annotations:
            if not a.own:
                handles.append(
                    contracts.attach(a.owner, a.attribute, returns=a.returns, **a.params)
                )
        with contracts.mode("full"):
            _loop(case, count)
    except TorchdxError as exc:
        return _result(True, _loc_argument(exc, fault.expected), _first_line(exc),
                       time.perf_counter() - t0, steps=step[0] + 1, via="contracts")  # fmt: skip
    except Exception as exc:
        return _result(False, False, f"not detected (the step itself raised {_first_line(exc)})",
                       time.perf_counter() - t0, via="contracts")  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    return _result(False, False, "", time.perf_counter() - t0, via="contracts")


def _nanwatch_localized(report: Any, expected: dict) -> bool:
    if "module" not in expected:
        return False
    ok = report.module == expected["module"]
    if "phase" in expected:
        ok = ok and report.phase == expected["phase"]
    if "items" in expected:
        ok = ok and report.bad_items == expected["items"]
    if "in_padding" in expected:
        ok = ok and report.in_padding_only == expected["in_padding"]
    return ok


def _step_nanwatch(case: StepCase, fault: Fault) -> dict:
    import diagnostics

    via = "NanWatch+GradFlow" if case.watch_grads else "NanWatch"
    t0 = time.perf_counter()
    watch = diagnostics.NanWatch(case.model)
    gf = diagnostics.GradFlow(case.model) if case.watch_grads else None
    i = 0
    try:
        with contracts.mode("off"):
            for i in range(case.steps):
                watch.run(case.step, i, context=case.context)
                if gf is not None:
                    rep = gf.record()
                    if rep.exploding or rep.nonfinite:
                        what = "exploding" if rep.exploding else "non-finite"
                        msg = _first_line(str(rep)) + f" ({what} gradient norm)"
                        loc = bool(fault.expected.get("exploding")) and rep.exploding
                        return _result(True, loc, msg, time.perf_counter() - t0, steps=i + 1,
                                       via=via)  # fmt: skip
                if case.after is not None:
                    case.after(i)
    except diagnostics.NonFiniteError as exc:
        return _result(True, _nanwatch_localized(exc.report, fault.expected), _first_line(exc),
                       time.perf_counter() - t0, steps=i + 1, via=via)  # fmt: skip
    except Exception as exc:
        return _result(False, False, f"not detected (the step itself raised {_first_line(exc)})",
                       time.perf_counter() - t0, via=via)  # fmt: skip
    return _result(False, False, "", time.perf_counter() - t0, steps=None, via=via)


def _step_anomaly(case: StepCase, fault: Fault) -> dict:
    t0 = time.perf_counter()
    step = [0]

    def count(i: int, loss: Any) -> None:
        step[0] = i + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contracts.mode("off"), torch.autograd.detect_anomaly(check_nan=True):
                _loop(case, count)
        except RuntimeError as exc:
            if "returned nan" not in str(exc) and "anomaly" not in str(exc).lower():
                return _result(False, False, f"not detected (the step itself raised "
                               f"{_first_line(exc)})", time.perf_counter() - t0)  # fmt: skip
            trace = "\n".join(
                str(w.message) for w in caught if "Traceback of forward call" in str(w.message)
            )
            loc = _trace_points_at(trace, _expected_region(case, fault.expected))
            return _result(True, loc, _first_line(exc), time.perf_counter() - t0,
                           steps=step[0] + 1)  # fmt: skip
        except Exception as exc:
            return _result(False, False, f"not detected (the step itself raised "
                           f"{_first_line(exc)})", time.perf_counter() - t0)  # fmt: skip
    return _result(False, False, "", time.perf_counter() - t0)


def _jaxtyped_copy(func: Any, params: dict[str, Any], returns: Any) -> Any:
    """A copy of ``func`` with the given annotations, checked by jaxtyping + beartype."""
    from beartype import beartype
    from jaxtyping import jaxtyped

    sig = inspect.signature(func)
    decl, call, defaults = [], [], {}
    kw_marker = False
    P = inspect.Parameter
    for p in sig.parameters.values():
        if p.kind is P.VAR_POSITIONAL:
            decl.append(f"*{p.name}")
            call.append(f"*{p.name}")
            kw_marker = True
            continue
        if p.kind is P.VAR_KEYWORD:
            decl.append(f"**{p.name}")
            call.append(f"**{p.name}")
            continue
        if p.kind is P.KEYWORD_ONLY and not kw_marker:
            decl.append("*")
            kw_marker = True
        if p.default is not P.empty:
            defaults[p.name] = p.default
            decl.append(f"{p.name}=__d[{p.name!r}]")
        else:
            decl.append(p.name)
        call.append(f"{p.name}={p.name}" if p.kind is P.KEYWORD_ONLY else p.name)
    src = f"def {func.__name__}({', '.join(decl)}):\n    return __f({', '.join(call)})\n"
    ns: dict[str, Any] = {"__d": defaults, "__f": func}
    exec(src, ns)  # a plain def with the same parameters (beartype needs real ones)
    copy = ns[func.__name__]
    copy.__qualname__ = getattr(func, "__qualname__", func.__name__)
    copy.__module__ = getattr(func, "__module__", None) or "__main__"
    copy.__annotations__ = dict(params)
    if returns is not None:
        copy.__annotations__["return"] = returns
    return jaxtyped(typechecker=beartype)(copy)


def _step_jaxtyping(case: StepCase, fault: Fault) -> dict:
    from beartype.roar import BeartypeException
    from jaxtyping import TypeCheckError

    if not case.annotations:
        return not_applicable("no shape annotations for this case")
    saved = []
    t0 = time.perf_counter()
    step = [0]

    def count(i: int, loss: Any) -> None:
        step[0] = i + 1

    try:
        for a in case.annotations:
            own = isinstance(a.owner, type) and a.attribute in a.owner.__dict__
            orig = a.owner.__dict__[a.attribute] if own else getattr(a.owner, a.attribute)
            saved.append((a.owner, a.attribute, orig, own))
            returns = None if isinstance(a.returns, dict) else a.returns
            setattr(a.owner, a.attribute, _jaxtyped_copy(orig, a.params, returns))
        with contracts.mode("off"):
            _loop(case, count)
    except (TypeCheckError, BeartypeException) as exc:
        m = re.search(r"typechecking parameter '(\w+)'", str(exc))
        loc = m is not None and m.group(1) == fault.expected.get("argument")
        return _result(True, loc, _first_line(exc), time.perf_counter() - t0, steps=step[0] + 1)
    except Exception as exc:
        return _result(False, False, f"not detected (the step itself raised {_first_line(exc)})",
                       time.perf_counter() - t0)  # fmt: skip
    finally:
        for owner, attr, orig, own in reversed(saved):
            if own:
                setattr(owner, attr, orig)
            else:
                delattr(owner, attr)
    return _result(False, False, "", time.perf_counter() - t0)


class _Found(Exception):
    def __init__(self, name: str, summary: str) -> None:
        super().__init__(name)
        self.name, self.summary = name, summary


def _step_isfinite(case: StepCase, fault: Fault) -> dict:
    from torch.utils._pytree import tree_flatten

    def make(name: str) -> Any:
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                    if not torch.isfinite(t).all():
                        raise _Found(name, f"non-finite output of module {name!r} "
                                     f"({type(mod).__name__})")  # fmt: skip

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in case.model.named_modules()]
    t0 = time.perf_counter()
    step = [0]

    def count(i: int, loss: Any) -> None:
        step[0] = i + 1

    try:
        with contracts.mode("off"):
            _loop(case, count)
    except _Found as found:
        exp = fault.expected
        loc = "module" in exp and exp["module"] == found.name and exp.get("phase") != "backward"
        return _result(True, loc, found.summary, time.perf_counter() - t0, steps=step[0] + 1)
    except Exception as exc:
        return _result(False, False, f"not detected (the step itself raised {_first_line(exc)})",
                       time.perf_counter() - t0)  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    return _result(False, False, "", time.perf_counter() - t0)


def _step_loss_check(case: StepCase, fault: Fault) -> dict:
    t0 = time.perf_counter()

    def check(i: int, loss: Any) -> None:
        value = loss["loss"] if isinstance(loss, dict) else loss
        if not bool(torch.isfinite(value.detach()).all()):
            # it says "the loss", so it points at the right place only when the loss code is it
            raise _Stop(i, f"loss is not finite at step {i}: {float(value):g}",
                        "module" in fault.expected and fault.expected["module"] is None)  # fmt: skip

    try:
        with contracts.mode("off"):
            _loop(case, check)
    except _Stop as stop:
        return _result(True, stop.localized, stop.message, time.perf_counter() - t0,
                       steps=stop.step + 1)  # fmt: skip
    except Exception as exc:
        return _result(False, False, f"not detected (the step itself raised {_first_line(exc)})",
                       time.perf_counter() - t0)  # fmt: skip
    return _result(False, False, "", time.perf_counter() - t0)


def _plain(run: Any) -> dict:
    """No tool: the faulty code fails on its own (an exception), or runs silently."""
    t0 = time.perf_counter()
    try:
        with contracts.mode("off"):
            run()
    except Exception as exc:
        return _result(True, False, _first_line(exc), time.perf_counter() - t0)
    return _result(False, False, "ran without an error", time.perf_counter() - t0)


# ----------------------------------------------------------------------------- other cases
def _gradflow(case: GradCase, fault: Fault) -> dict:
    import diagnostics

    t0 = time.perf_counter()
    gf = diagnostics.GradFlow(case.model)
    with contracts.mode("off"):
        case.step()
    rep = gf.record()
    frozen = [f.split(" (")[0] for f in rep.frozen]
    flagged = [*rep.unused, *rep.zero, *rep.nonfinite, *frozen]
    secs = time.perf_counter() - t0
    if not flagged:
        return _result(False, False, "", secs, via="GradFlow")
    kinds = [(t, n) for t, n in (("unused (grad is None)", rep.unused), ("zero gradient", rep.zero),
             ("non-finite gradient", rep.nonfinite), ("frozen (requires_grad=False)", rep.frozen))
             if n]  # fmt: skip
    msg = "; ".join(f"{t}: {', '.join(n[:4])}" + (" ..." if len(n) > 4 else "") for t, n in kinds)
    prefixes = fault.expected.get("params", [])
    loc = bool(prefixes) and all(
        any(n == p or n.startswith(p + ".") for p in prefixes) for n in flagged
    )
    return _result(True, loc, msg, secs, via="GradFlow")


def _ablation(case: AblationCase, fault: Fault) -> dict:
    import diagnostics

    ablations = ["zero", "mean", "random", "shuffle"]
    if case.target.null is not None:
        ablations.append("null")
    t0 = time.perf_counter()
    with contracts.mode("off"):
        rep = diagnostics.run_ablation(
            case.target,
            sites=case.sites,
            ablations=ablations,
            seed=0,
            embeddings=case.embedding_site is not None,
            umap=False,
            guidance=False,
        )
    secs = time.perf_counter() - t0
    flagged: dict[str, str] = {}
    for s in rep.sites:
        reason = s.get("reason") or ""
        if s["verdict"] != "used":
            flagged[s["site"]] = f"site {s['site']!r}: verdict {s['verdict']}" + (
                f" ({reason})" if reason else ""
            )
        elif s.get("additive"):  # used, but only as an additive bias on the output
            flagged[s["site"]] = f"site {s['site']!r}: verdict used, additive ({reason})"
    emb = rep.embedding
    if emb is not None and getattr(emb, "collapsed", False):
        site = case.embedding_site or "?"
        flagged.setdefault(site, f"embedding at {site!r} collapsed: {emb.collapse_reason}")
    if not flagged:
        verdicts = ", ".join(f"{s['site']}={s['verdict']}" for s in rep.sites)
        return _result(False, False, f"not detected (verdicts: {verdicts})", secs,
                       via="run_ablation")  # fmt: skip
    loc = set(flagged) <= set(fault.expected.get("sites", []))
    return _result(True, loc, "; ".join(flagged.values())[:300], secs, via="run_ablation")


def _probe(case: ProbeCase, fault: Fault) -> dict:
    t0 = time.perf_counter()
    try:
        with contracts.mode("full"):
            case.probe()
    except TorchdxError as exc:
        return _result(True, _loc_names(str(exc), fault.expected), _first_line(exc),
                       time.perf_counter() - t0, via=case.tool)  # fmt: skip
    return _result(False, False, "", time.perf_counter() - t0, via=case.tool)


# ----------------------------------------------------------------------------- dispatch
def applicable(tool: str, kind: type, fault: Fault) -> bool:
    """Whether ``tool`` can see a fault of this case kind at all (else its column is "—")."""
    if tool == "torchdx":
        return True
    if kind is StepCase:
        if fault.category == "shapes":
            return tool in ("jaxtyping", "plain")
        return tool != "jaxtyping"
    return tool == "plain" and kind is GradCase


_WHY = {
    "shapes": "sees non-finite values only, not shapes",
    "jaxtyping": "checks shapes and dtypes, not values",
    "plain": "a silent fault: nothing runs that could fail",
    "probe": "a probe is the check itself",
    "other": "no anchor looks at this",
}


def run_tool(tool: str, case: Any, fault: Fault, *, kind: type | None = None) -> dict:
    """Run ``tool`` on ``case`` (a fresh build) and score it against ``fault.expected``.

    With ``case=None`` and the case ``kind`` given, only the "not applicable" answer is
    returned (no build needed).
    """
    assert tool in TOOLS, f"run_tool: unknown tool {tool!r}; valid: {', '.join(TOOLS)}"
    kind = type(case) if case is not None else kind
    assert kind is not None, "run_tool: give a case or its kind"
    if not applicable(tool, kind, fault):
        if kind is StepCase:
            why = _WHY["jaxtyping"] if tool == "jaxtyping" else _WHY["shapes"]
        elif tool == "plain":
            why = _WHY["probe"] if kind is ProbeCase else _WHY["plain"]
        else:
            why = _WHY["other"]
        return not_applicable(why)
    if kind is StepCase:
        if tool == "torchdx":
            return (_step_contracts if fault.category == "shapes" else _step_nanwatch)(case, fault)
        if tool == "plain":
            return _plain(lambda: _loop(case))
        return {"jaxtyping": _step_jaxtyping, "detect_anomaly": _step_anomaly,
                "isfinite_hooks": _step_isfinite, "loss_check": _step_loss_check}[tool](
                    case, fault)  # fmt: skip
    if tool == "plain":
        return _plain(case.step)
    if kind is GradCase:
        return _gradflow(case, fault)
    if kind is AblationCase:
        return _ablation(case, fault)
    if kind is ProbeCase:
        return _probe(case, fault)
    raise TypeError(f"run_tool: unknown case type {kind.__name__}")
