"""The ``quantize-int8`` pass's work: a bounded mixed-precision search for the fastest int8 plan that
meets the quality gates.

1. Every candidate block in int8, in a few variants: with and without SmoothQuant scaling folded
   into the LayerNorms, and (static) MinMax and percentile calibration. The variant that meets the
   gates with the lowest error is kept; if one meets them, done (every block in int8 is the fastest).
2. Otherwise, per-block sensitivity: each block alone in int8, its error against float32.
3. Keep the most sensitive blocks in float32: a bisection on how many (error grows with the
   number of int8 blocks), so about log2(depth) more trials.

Every trial runs the candidate graph in ONNX Runtime on the validation images and compares it
with the float32 graph on the same images. Nothing here decides whether to write: the ``int8-gates``
pass checks the validated numbers of the chosen plan and refuses (or, forced, records) a miss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from promptcam.core.iospec import ATTENTION, LOGITS, PIXELS

from .gates import Int8Gates
from .int8 import ActivationRanges, Int8Plan, MatMulTarget, apply_plan, calibrate, find_targets, smooth_model
from .validate import compare

DEFAULT_BUDGET_S = 240.0
SMOOTH_ALPHAS = (0.0, 0.5)  # without, and SmoothQuant's usual strength


@dataclass
class Trial:
    """One candidate plan, measured."""

    label: str
    int8_blocks: list[int]
    calibration: str | None
    smooth: float
    top1_agreement: float
    attention_mean_correlation: float
    attention_min_correlation: float
    logits_rel_rms: float  # ||int8 - fp32|| / ||fp32|| over all logits
    seconds: float
    passed: bool

    @property
    def error(self) -> float:
        """One number to rank sensitivity: relative logit error plus lost attention correlation."""
        return self.logits_rel_rms + (1.0 - self.attention_mean_correlation)


@dataclass
class SearchResult:
    """The chosen plan and everything measured on the way (the per-layer report)."""

    plan: Int8Plan
    model: onnx.ModelProto
    passed: bool
    chosen: Trial | None = None  # the measured trial of ``plan``
    trials: list[Trial] = field(default_factory=list)
    sensitivity: dict[int, Trial] = field(default_factory=dict)
    seconds: float = 0.0
    budget_exhausted: bool = False
    targets: list[MatMulTarget] = field(default_factory=list)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)  # per MatMul, chosen plan vs float32

    def report(self, depth: int, gates: Int8Gates) -> dict[str, Any]:
        int8 = sorted(self.plan.int8_blocks)
        return {
            "mode": self.plan.mode, "calibration": self.plan.calibration if self.plan.mode == "static" else None,
            "smooth_alpha": self.plan.smooth, "chosen": asdict(self.chosen) if self.chosen else None,
            "plan": self.plan.describe(depth), "int8_blocks": int8,
            "fp32_blocks": sorted({t.block for t in self.targets} - set(int8)),
            "int8_matmuls": [t.name for t in self.targets if t.block in self.plan.int8_blocks],
            "gates": gates.as_dict(), "passed_search": self.passed, "search_seconds": self.seconds,
            "budget_exhausted": self.budget_exhausted,
            "reference": "float32 ONNX graph on the validation images",
            "sensitivity": {f"block{b}": asdict(t) for b, t in sorted(self.sensitivity.items())},
            "layers": self.layer_errors,
            "trials": [asdict(t) for t in self.trials],
        }


def _run(model: onnx.ModelProto, batches: list[np.ndarray], threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    logits, attention = zip(*(session.run([LOGITS, ATTENTION], {PIXELS: b}) for b in batches), strict=True)
    return np.concatenate(logits), np.concatenate(attention)


def measure(label: str, plan: Int8Plan, model: onnx.ModelProto, batches: list[np.ndarray],
            reference: tuple[np.ndarray, np.ndarray], gates: Int8Gates, threads: int | None = None) -> Trial:
    """Run ``model`` on ``batches`` and compare with the float32 ``reference`` outputs."""
    start = time.perf_counter()
    logits, attention = _run(model, batches, threads)
    lg = compare("logits", len(logits), logits, reference[0])
    at = compare("attention", len(logits), attention, reference[1])
    diff = logits.astype(np.float64) - reference[0]
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(reference[0].astype(np.float64)), 1e-30))
    numbers = {"top1_agreement": lg.top1_agreement, "attention_mean_correlation": at.mean_correlation,
               "attention_min_correlation": at.min_correlation}
    return Trial(label, sorted(plan.int8_blocks), plan.calibration if plan.mode == "static" else None, plan.smooth,
                 float(lg.top1_agreement), float(at.mean_correlation), float(at.min_correlation), rel,
                 time.perf_counter() - start, not gates.failures(numbers))


def search_int8(
    fp32: onnx.ModelProto,
    *,
    depth: int,
    mode: str,
    batches: list[np.ndarray],
    gates: Int8Gates,
    calibration: list[np.ndarray] | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    search: bool = True,
    smooth_alphas: tuple[float, ...] = SMOOTH_ALPHAS,
    signed_activations: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Find the plan with the most int8 blocks that meets ``gates`` on ``batches``.

    Args:
        fp32: The float32 graph.
        depth: Number of transformer blocks.
        mode: ``"dynamic"`` or ``"static"`` (needs ``calibration``).
        batches: Validation pixel batches (uint8 NHWC).
        gates: Quality gates a plan must meet.
        calibration: Pixel batches for static activation ranges.
        budget_s: Time after which no new trial starts; the best passing plan so far is kept.
        search: False: measure the all-int8 variants only.
        smooth_alphas: SmoothQuant strengths tried on the all-int8 plan (0: none); the variant with the
            lowest error is kept for the rest of the search.
        signed_activations: Static: symmetric int8 activations (TensorRT), else uint8.
        threads: ONNX Runtime threads for the trials (default: ORT's).
        log: Progress lines.

    Returns:
        The chosen plan; ``passed`` False when no plan with any int8 block met the gates (the
        best all-int8 variant is returned then, for ``--force``).
    """
    start = time.perf_counter()
    targets = find_targets(fp32, depth)
    blocks = sorted({t.block for t in targets})
    if mode == "static" and not calibration:
        raise ValueError("static int8 needs calibration batches")
    methods = ["minmax", "percentile"] if mode == "static" else ["minmax"]
    reference = _run(fp32, batches, threads)
    probe_pixels = np.concatenate(batches)[:2]
    # per-channel activation maxima for SmoothQuant: the calibration images, else the validation ones
    stats = calibrate(fp32, targets, calibration or batches) if mode == "static" or any(smooth_alphas) else None
    bases: dict[float, tuple[onnx.ModelProto, ActivationRanges | None]] = {}
    for alpha in smooth_alphas:
        base = smooth_model(fp32, targets, stats.channel_absmax, alpha) if alpha and stats else fp32
        ranges = (stats if not alpha else calibrate(base, targets, calibration)) if mode == "static" else None
        bases[alpha] = (base, ranges)
    result = SearchResult(Int8Plan(mode, frozenset(blocks)), fp32, False, targets=targets)

    def trial(label: str, plan: Int8Plan) -> Trial:
        base, ranges = bases[plan.smooth]
        measured = measure(label, plan, apply_plan(base, targets, plan, ranges), batches, reference, gates, threads)
        result.trials.append(measured)
        log(f"    int8 trial {label:<34} top1={measured.top1_agreement:.3f} "
            f"attention corr mean/min={measured.attention_mean_correlation:.4f}/"
            f"{measured.attention_min_correlation:.4f} logits rel={measured.logits_rel_rms:.2e}"
            f"{'  PASS' if measured.passed else ''}")
        return measured

    def over_budget() -> bool:
        result.budget_exhausted = time.perf_counter() - start > budget_s
        return result.budget_exhausted

    variants = [Int8Plan(mode, frozenset(blocks), m, a, signed_activations) for a in smooth_alphas for m in methods]
    full = [(trial("all int8" + _variant_label(v), v), v) for v in variants]
    best, plan = min(full, key=lambda tv: (not tv[0].passed, tv[0].error))
    result.plan, result.chosen = plan, best
    if best.passed or not search:
        result.passed = best.passed
        return _finish(result, bases, start, fp32, probe_pixels)

    for block in blocks:
        if over_budget():
            break
        result.sensitivity[block] = trial(f"only block{block} int8", replace(plan, int8_blocks=frozenset([block])))
    # most sensitive first; blocks not measured (budget) go first too: no evidence they are safe
    order = sorted(blocks, key=lambda b: -(result.sensitivity[b].error if b in result.sensitivity else np.inf))
    low, high = 0, len(order)  # keeping order[:low] fp32 fails; order[:high] fp32 passes (all fp32: no int8)
    while high - low > 1 and not over_budget():
        mid = (low + high) // 2
        candidate = replace(plan, int8_blocks=frozenset(order[mid:]))
        measured = trial(f"{mid} most sensitive fp32", candidate)
        if measured.passed:
            high = mid
            result.plan, result.chosen, result.passed = candidate, measured, True
        else:
            low = mid
    return _finish(result, bases, start, fp32, probe_pixels)


def _variant_label(plan: Int8Plan) -> str:
    parts = ([plan.calibration] if plan.mode == "static" else []) + ([f"smooth {plan.smooth:g}"] if plan.smooth else [])
    return f" ({', '.join(parts)})" if parts else ""


def _finish(result: SearchResult, bases: dict[float, tuple[onnx.ModelProto, ActivationRanges | None]],
            start: float, fp32: onnx.ModelProto, pixels: np.ndarray) -> SearchResult:
    base, ranges = bases[result.plan.smooth]
    result.model = apply_plan(base, result.targets, result.plan, ranges)
    result.layer_errors = layer_errors(fp32, result.model, result.targets, result.plan, pixels)
    result.seconds = time.perf_counter() - start
    return result


def layer_errors(fp32: onnx.ModelProto, quantized: onnx.ModelProto, targets: list[MatMulTarget], plan: Int8Plan,
                 pixels: np.ndarray) -> list[dict[str, Any]]:
    """Relative error of every candidate MatMul's output (bias added) in ``quantized`` against ``fp32``.

    The error accumulates along the network; a jump at one layer points at that layer. Two images
    keep the memory of all intermediate outputs bounded (a ViT-B: ~200 MB).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    names = [t.output for t in targets]

    def run(model: onnx.ModelProto) -> list[np.ndarray]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(names, {PIXELS: pixels})

    errors = []
    for target, got, want in zip(targets, run(quantized), run(fp32), strict=True):
        diff = np.linalg.norm(got.astype(np.float64) - want)
        errors.append({"matmul": target.name, "block": target.block, "role": target.role,
                       "int8": target.block in plan.int8_blocks,
                       "rel_error": float(diff / max(np.linalg.norm(want.astype(np.float64)), 1e-30))})
    return errors


def report_markdown(report: dict[str, Any], validation: dict[str, Any] | None = None) -> str:
    """``int8_report.md``: the chosen plan, the gates and every trial."""
    gates = report["gates"]
    lines = [
        "# int8 report", "",
        f"Chosen: **{report['plan']}**; search {report['search_seconds']:.1f} s"
        + (" (time budget reached)" if report["budget_exhausted"] else "") + ".",
        f"Gates: top-1 agreement >= {gates['top1']:g}, attention correlation >= {gates['attention_mean']:g} "
        f"mean and >= {gates['attention_min']:g} worst map. Trials compare with the {report['reference']}.", "",
    ]
    if validation:
        lines += [f"Validation of the written graph against eager PyTorch ({validation.get('images')} images): "
                  f"top-1 agreement {validation.get('top1_agreement'):.4f}, attention correlation mean "
                  f"{validation.get('attention_mean_correlation'):.5f}, worst map "
                  f"{validation.get('attention_min_correlation'):.5f}.", ""]
    header = ["| trial | int8 blocks | calibration | top-1 | attention mean | attention worst | logits rel err "
              "| pass |", "|---|---|---|---|---|---|---|---|"]

    def row(t: dict[str, Any]) -> str:
        return (f"| {t['label']} | {len(t['int8_blocks'])} | {t['calibration'] or '-'} | {t['top1_agreement']:.3f} "
                f"| {t['attention_mean_correlation']:.5f} | {t['attention_min_correlation']:.5f} "
                f"| {t['logits_rel_rms']:.2e} | {'yes' if t['passed'] else 'no'} |")

    lines += ["## Trials", "", *header, *(row(t) for t in report["trials"]), ""]
    if report.get("layers"):
        lines += ["## Per-layer error of the chosen plan (2 images)", "",
                  "Relative error of each MatMul's output against float32; it accumulates along the network.", "",
                  "| MatMul | block | role | int8 | relative error |", "|---|---|---|---|---|",
                  *(f"| {e['matmul']} | {e['block']} | {e['role']} | {'yes' if e['int8'] else 'no'} "
                    f"| {e['rel_error']:.2e} |" for e in report["layers"]), ""]
    if report["sensitivity"]:
        lines += ["## Per-block sensitivity (only that block in int8)", "", *header,
                  *(row(t) for t in report["sensitivity"].values()), ""]
    return "\n".join(lines)


# pass bodies (the pass classes in passes.py call these) ----------------------------------------------

REPORT_JSON, REPORT_MD = "int8_report.json", "int8_report.md"


def quantize_pass(ctx: Any, batches: list[np.ndarray]) -> str:
    """``quantize-int8``: search, then put the chosen int8 graph in ``ctx.graph``."""
    opts = ctx.options
    depth = ctx.require("model").config.depth
    result = search_int8(ctx.require("graph"), depth=depth, mode=opts.int8_mode, batches=batches,
                         gates=opts.int8_gates, calibration=ctx.calibration if opts.int8_mode == "static" else None,
                         budget_s=opts.int8_budget_s, search=opts.int8_search, signed_activations=opts.engine == "trt",
                         log=ctx.log)
    ctx.graph, ctx.int8_mode = result.model, opts.int8_mode
    ctx.int8_report = result.report(depth, opts.int8_gates)
    verdict = "meets the gates" if result.passed else "NO plan met the gates"
    return f"{result.plan.describe(depth)}; {verdict} ({len(result.trials)} trials, {result.seconds:.0f} s)"


def gates_pass(ctx: Any) -> str:
    """``int8-gates``: the validated numbers (or, without validation, the search's) against the gates."""
    from .gates import check_int8_gates

    opts = ctx.options
    if ctx.validation:
        numbers, reference = ctx.validation, "eager PyTorch float32"
    else:
        numbers, reference = ctx.require("int8_report")["chosen"], "the float32 ONNX graph (--no-validate)"
    record = check_int8_gates(numbers, opts.int8_gates, reference=reference, force=opts.force, log=ctx.log)
    ctx.validation["int8_gates"] = record
    if ctx.int8_report is not None:
        ctx.int8_report["final"] = record
    state = "passed" if record["passed"] else "FORCED past " + "; ".join(record["failed"])
    return (f"{state}: top1={numbers['top1_agreement']:.4f} attention mean/worst="
            f"{numbers['attention_mean_correlation']:.5f}/{numbers['attention_min_correlation']:.5f}")


def write_report_pass(ctx: Any) -> str:
    """``write-int8-report``: ``int8_report.json`` and ``.md`` beside the model."""
    import json

    from promptcam.core.atomic import atomic_write_text

    out, report = ctx.options.out, ctx.require("int8_report")
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    validated = ctx.validation if "top1_agreement" in ctx.validation else None
    atomic_write_text(out / REPORT_MD, report_markdown(report, validated))
    return f"{out}/{REPORT_JSON}, {REPORT_MD}"
