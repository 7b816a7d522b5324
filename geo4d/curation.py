"""Choosing the shots of a dataset: filter expressions over the quality scores, and splits by video.

Filter expressions (``geo4d export --where``; docs/curation.md) are Python-like conditions over the
scores of :data:`geo4d.quality.SCORE_NAMES` and the shot's ``n_frames``::

    window_agreement < 0.05 and rotation_deg > 5
    not (sky_fraction >= 0.5 or dynamic_fraction > 0.3) and data_checks

They are parsed with :mod:`ast` and evaluated by walking the tree: only comparisons
(``< <= > >= == !=``, chained too), ``and`` / ``or`` / ``not``, numbers, ``True`` / ``False`` and the
score names are allowed — anything else (calls, attributes, other names) is a one-line
:class:`InputError`; nothing is ever passed to ``eval``. A comparison with a score that is None (not
computed) is false, unless the filter is lenient (the default filter: results fused before scores
existed keep passing it).

Splits: a video's split is chosen from a hash of ``"<seed>:<video id>"`` (SHA-256, its first 8 bytes
as a fraction of 2⁶⁴) against the cumulative split fractions, so every shot of one video lands in
the same split, the same seed and fractions give the same splits on any machine, and adding videos
never moves the others.
"""

from __future__ import annotations

import ast
import hashlib
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geo4d.errors import InputError
from geo4d.quality import SCORE_NAMES

__all__ = ["ShotFilter", "DEFAULT_WHERE", "FILTER_NAMES", "DEFAULT_SPLITS", "parse_where", "load_where",
           "parse_splits", "assign_split"]

#: Names a filter may use: the scores and the shot's length.
FILTER_NAMES = SCORE_NAMES + ("n_frames",)
#: The default filter: drops shots whose fusion failed its data checks or one of whose windows, after
#: its own alignment, misses the fused geometry in some frame by 5 % of depth or more (median over the
#: frame's pixels) — corrupted reconstructions. Calibrated on the SYNTHETIC archives
#: (benchmarks/curation.py, docs/curation.md): ``worst_window_agreement`` is ≤ 0.001 on the
#: noise-free test videos and ≤ 0.023 on the benchmark's clean and static shots with its mild
#: predictor noise (2 % depth, 0.2° pose jitter), against ≥ 0.074 for every shot with a corrupted
#: window (0.16 noise-free); 0.05 lies in that gap, 2.2× above the noisiest clean shot and 1.5×
#: below the mildest corrupted one (a 7.5° drift of one window of a 22-frame shot). ``window_agreement`` (the median over all windows) is not used: clean and corrupted shots
#: overlap on it under noise (0.0124 against 0.0133). ``flagged_windows`` is not used either: its
#: outlier rule is relative to the shot's own residual spread, so it flags float16-level mismatches
#: of noise-free windows (an end frame seen by one window only) and misses corruptions that spoil
#: most windows. Network predictions of real videos disagree more than the synthetic ones: give
#: real archives their own ``--where``. Scores that are None (results fused before the score
#: existed) pass it.
DEFAULT_WHERE = "data_checks and worst_window_agreement < 0.05"
#: Default split fractions (by video).
DEFAULT_SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}


@dataclass(frozen=True)
class ShotFilter:
    """A parsed filter expression.

    Attributes:
        text: the expression as given.
        tree: its checked :mod:`ast` tree.
        lenient: comparisons with a None score pass (True) or fail (False).

    Example:
        >>> f = parse_where("window_agreement < 0.05 and rotation_deg > 5")
        >>> f.passes({"window_agreement": 0.01, "rotation_deg": 12.0}), f.failing({"window_agreement": 0.2})
        (True, 'window_agreement < 0.05 (window_agreement = 0.2)')
    """

    text: str
    tree: ast.Expression
    lenient: bool = False

    def passes(self, scores: Mapping[str, Any]) -> bool:
        """Whether a shot with ``scores`` passes the filter."""
        return bool(_value(self.tree.body, scores, self.lenient))

    def failing(self, scores: Mapping[str, Any]) -> str | None:
        """Why ``scores`` fail: the first failing clause of the top-level ``and`` with the values it
        read (the whole expression when it is not an ``and``); None when they pass."""
        if self.passes(scores):
            return None
        body = self.tree.body
        clauses = body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And) else [body]
        for clause in clauses:
            if not _value(clause, scores, self.lenient):
                names = sorted({n.id for n in ast.walk(clause) if isinstance(n, ast.Name) and n.id in FILTER_NAMES})
                seen = ", ".join(f"{n} = {_show(scores.get(n))}" for n in names)
                return f"{ast.unparse(clause)}" + (f" ({seen})" if seen else "")
        return self.text


def _show(v: Any) -> str:
    return "None" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def parse_where(text: str, lenient: bool = False, what: str = "--where") -> ShotFilter:
    """Parse and check a filter expression (module docstring); :class:`InputError` naming the problem."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"{what} {text!r}: not an expression ({exc.msg})") from None
    for node in ast.walk(tree):
        _check_node(node, text, what)
    return ShotFilter(str(text).strip(), tree, lenient)


def _check_node(node: ast.AST, text: str, what: str) -> None:
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare,
               ast.Name, ast.Load, ast.Constant, *_COMPARE)
    if not isinstance(node, allowed):
        raise InputError(f"{what} {text!r}: {type(node).__name__.lower()} is not allowed (only comparisons of "
                         f"scores with numbers, and/or/not)")
    if isinstance(node, ast.Name) and node.id not in FILTER_NAMES + ("True", "False"):
        raise InputError(f"{what} {text!r}: unknown name {node.id!r} (scores: {', '.join(FILTER_NAMES)})")
    if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool):
        raise InputError(f"{what} {text!r}: {node.value!r} is not a number")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
        raise InputError(f"{what} {text!r}: '-' applies to numbers only")


def _value(node: ast.AST, scores: Mapping[str, Any], lenient: bool) -> Any:
    """The value of a checked node; a comparison involving None is ``lenient``."""
    if isinstance(node, ast.BoolOp):
        vals = (_value(v, scores, lenient) for v in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _value(node.operand, scores, lenient)
        return (not v) if isinstance(node.op, ast.Not) else -v
    if isinstance(node, ast.Compare):
        return _compare(node, scores, lenient)
    if isinstance(node, ast.Name):
        v = {"True": True, "False": False}.get(node.id, scores.get(node.id))
        return lenient if v is None else v
    return node.value  # ast.Constant


def _compare(node: ast.Compare, scores: Mapping[str, Any], lenient: bool) -> bool:
    left = _value(node.left, scores, lenient) if not isinstance(node.left, ast.Name) else scores.get(node.left.id)
    for op, right_node in zip(node.ops, node.comparators):
        right = scores.get(right_node.id) if isinstance(right_node, ast.Name) else _value(right_node, scores, lenient)
        if left is None or right is None:
            return lenient
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True


def load_where(value: str | None) -> tuple[ShotFilter, str | None]:
    """``--where`` → ``(filter, filter file or None)``: an expression, ``none`` (no filter), a YAML
    file (``where: EXPR`` or ``all: [EXPR, …]``, joined with ``and``), or None: :data:`DEFAULT_WHERE`
    (lenient)."""
    if value is None:
        return parse_where(DEFAULT_WHERE, lenient=True, what="default filter"), None
    if value.strip().lower() == "none":
        return parse_where("True"), None
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_where(_yaml_expression(path), what=str(path)), str(path)
    return parse_where(value), None


def _yaml_expression(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"--where {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"--where {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("where"), str) and set(data) <= {"where"}:
        return data["where"]
    if isinstance(data, dict) and isinstance(data.get("all"), list) and set(data) <= {"all"} and data["all"]:
        return " and ".join(f"({str(c)})" for c in data["all"])
    raise InputError(f"--where {path}: expected 'where: EXPRESSION' or 'all: [EXPRESSION, ...]'")


def parse_splits(text: str | None) -> dict[str, float]:
    """``train=0.8,validation=0.1,test=0.1`` → fractions (summing to 1 within 1e-6); None: the default.

    >>> parse_splits("train=0.9,test=0.1")
    {'train': 0.9, 'test': 0.1}
    """
    if not text:
        return dict(DEFAULT_SPLITS)
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, frac = part.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or not 0 <= value <= 1:
            raise InputError(f"--split {text!r}: expected NAME=FRACTION,… with fractions in [0, 1]")
        out[name.strip()] = value
    if abs(sum(out.values()) - 1) > 1e-6:
        raise InputError(f"--split {text!r}: the fractions add up to {sum(out.values()):g}, not 1")
    return out


def assign_split(video_id: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """The split of ``video_id`` (module docstring): deterministic, the same for all its shots.

    >>> assign_split("clip-1", {"train": 1.0}), assign_split("clip-1", DEFAULT_SPLITS, 3) in DEFAULT_SPLITS
    ('train', True)
    """
    digest = hashlib.sha256(f"{int(seed)}:{video_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    total = 0.0
    names = list(fractions)
    for name in names:
        total += float(fractions[name])
        if u < total:
            return name
    return names[-1]
