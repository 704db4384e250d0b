"""Scripted experts for all 50 Meta-World v3 tasks that also say *how* they act.

The actions are exactly those of Meta-World's own scripted policies (`metaworld.policies`): the
reference every success rate in the literature is measured against, so we must not re-implement
them. What those policies do not expose is their *procedure*: the positions they read from the
state, which branch of their little state machine they are in, and the point they steer the hand
toward. Recording that per step gives demonstrations sub-task labels (phases), targets for
auxiliary losses, and a way to check a learned policy against the expert's intent.

How the procedure is obtained, without 50 hand-written tables: almost every policy computes its
target in a `_desired_pos(o_d)` staticmethod whose `return` statements are the phases. We parse
its source with `ast`, rewrite every `return X` into `return (k, X)` (k = the return's index in
source order), and compile the rewritten function once per class in the policy module's
globals. Phase names come from the comments the authors wrote above the branch, cleaned to a
short phrase, else from the branch condition. Policies without `_desired_pos` (reach-v3,
drawer-open-v3) call `move(hand, to_xyz, p)` directly from `get_action`; there every `move(...)`
call becomes a phase instead, recorded by a rewritten `get_action`.

Several policies modify the arrays of their parsed observation in place, and `_parse_obs`
returns views into the observation, so every evaluation here works on its own copy of the state.

`FamilyExpert` is the same expert as the Meta-World env family offers it to the recorder and to
evaluation (`envs.family.Expert`): the action as executed, the procedure as store keys.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import re
import sys
import tokenize
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import metaworld
import numpy as np
from metaworld.policies import ENV_POLICY_MAP
from metaworld.policies.policy import Policy

from envs.family import unknown

__all__ = [
    "PROCEDURE_ARRAYS",
    "PROCEDURE_VECTOR_LAYOUT",
    "FamilyExpert",
    "Procedure",
    "ScriptedExpert",
    "expert_for",
]

STATE_SIZE = 39
_MOVE_WARNING = r"Constant\(s\) may be too high"

PROCEDURE_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "hand": ((3,), "float32"),
    "object": ((3,), "float32"),
    "goal": ((3,), "float32"),
    "phase": ((), "int16"),
    "target": ((3,), "float32"),
    "grab_effort": ((), "float32"),
}
"""Shape and dtype of each entry of `Procedure.as_arrays()`: the same for every task, so
procedures of any task can be stored per step in one fixed schema."""

PROCEDURE_VECTOR_LAYOUT: dict[str, slice] = {
    "hand": slice(0, 3),
    "object": slice(3, 6),
    "goal": slice(6, 9),
    "phase": slice(9, 10),
    "target": slice(10, 13),
    "grab_effort": slice(13, 14),
}
"""Where each part of the procedure lies in `Procedure.as_vector()` (14 float32)."""


@dataclass(frozen=True)
class Procedure:
    """What the expert acted on and intended at one step.

    `positions` always holds "hand", "object" (the policy's main object) and "goal" (the task
    goal, state[36:39]), then every other 3-D position the policy parsed, named after its key
    in the policy's `_parse_obs` without the `_pos` suffix (e.g. "peg", "obj"). `target` is the
    point the policy moves the hand toward; the action's xyz is `p * (target - hand)` for the
    policy's gain p. `phase` indexes `ScriptedExpert.phases`.
    """

    positions: dict[str, np.ndarray]
    phase: int
    phase_name: str
    target: np.ndarray
    grab_effort: float

    VECTOR_SIZE: ClassVar[int] = 14

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Fixed-shape arrays (see `PROCEDURE_ARRAYS`) for storing the procedure per step; the
        task-specific extra positions are left out so every task shares one layout."""
        return {
            "hand": self.positions["hand"].astype(np.float32),
            "object": self.positions["object"].astype(np.float32),
            "goal": self.positions["goal"].astype(np.float32),
            "phase": np.asarray(self.phase, dtype=np.int16),
            "target": self.target.astype(np.float32),
            "grab_effort": np.asarray(self.grab_effort, dtype=np.float32),
        }

    def as_vector(self) -> np.ndarray:
        """The procedure as 14 float32, laid out as `PROCEDURE_VECTOR_LAYOUT` says."""
        out = np.empty(self.VECTOR_SIZE, dtype=np.float32)
        for name, value in self.as_arrays().items():
            out[PROCEDURE_VECTOR_LAYOUT[name]] = value
        return out


# --- reading the policy source -----------------------------------------------------------------


@dataclass(frozen=True)
class _Site:
    """One phase: a `return` of `_desired_pos`, or a `move(...)` call of `get_action`."""

    node: ast.AST
    statement: ast.stmt
    target: ast.expr


@dataclass
class _Source:
    """A policy module's parsed source, its comments and a parent map for walking up."""

    tree: ast.Module
    comments: dict[int, str]
    """Line → text of comments that fill their whole line."""
    else_lines: list[int]
    """Lines of `else` keywords, to find the header of an else-branch."""
    parents: dict[int, ast.AST] = field(default_factory=dict)

    @classmethod
    def of_module(cls, module_name: str) -> _Source:
        text = inspect.getsource(sys.modules[module_name])
        comments: dict[int, str] = {}
        else_lines: list[int] = []
        lines = text.splitlines()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            row = tok.start[0]
            if tok.type == tokenize.COMMENT and lines[row - 1].strip().startswith("#"):
                comments[row] = tok.string
            elif tok.type == tokenize.NAME and tok.string == "else":
                else_lines.append(row)
        source = cls(ast.parse(text), comments, else_lines)
        for parent in ast.walk(source.tree):
            for child in ast.iter_child_nodes(parent):
                source.parents[id(child)] = parent
        return source

    def function(self, class_name: str, name: str) -> ast.FunctionDef:
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == name:
                        return item
        raise LookupError(f"{class_name}.{name} not found in its module's source")

    def comments_above(self, line: int) -> list[str]:
        """The block of whole-line comments directly above `line`, top to bottom."""
        found: list[str] = []
        line -= 1
        while line in self.comments:
            found.append(self.comments[line])
            line -= 1
        return found[::-1]


@functools.cache
def _module_source(module_name: str) -> _Source:
    return _Source.of_module(module_name)


_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own_nodes(function: ast.FunctionDef):
    """The nodes of `function`'s body, without descending into nested scopes."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _NESTED_SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _is_move_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "move") or (
        isinstance(func, ast.Attribute) and func.attr == "move"
    )


def _move_target(call: ast.Call) -> ast.expr:
    for kw in call.keywords:
        if kw.arg == "to_xyz":
            return kw.value
    return call.args[1]


def _enclosing_statement(node: ast.AST, source: _Source) -> ast.stmt:
    while not isinstance(node, ast.stmt):
        node = source.parents[id(node)]
    return node


def _sites(function: ast.FunctionDef, source: _Source, mode: str) -> list[_Site]:
    """The phases of `function` in source order."""
    sites: list[_Site] = []
    for node in _own_nodes(function):
        if mode == "returns" and isinstance(node, ast.Return) and node.value is not None:
            sites.append(_Site(node, node, node.value))
        elif mode == "moves" and _is_move_call(node):
            assert isinstance(node, ast.Call)
            sites.append(_Site(node, _enclosing_statement(node, source), _move_target(node)))
    sites.sort(key=lambda s: (s.node.lineno, s.node.col_offset))  # type: ignore[attr-defined]
    return sites


_COMPOUND = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.Match, ast.FunctionDef)
_CODE_COMMENT = re.compile(
    r"^(?:(?:else|try|finally)\s*:|(?:if|elif|for|while|except)\b.*:|return\b.*"
    r"|[\w.\[\]\"']+\s*[-+*/]?=\s*\S.*)$"
)
_CONDITION_WORDS = re.compile(r"^(?:if|once|when|while|after|before|since|as soon as)\b")
_CLAUSE_END = re.compile(r"[,;:!?]|\.(?!\d)| if | but | also | so that ")


def _shorten(text: str) -> str:
    """A comment as a short lowercase phrase: its main clause, without conditions or asides."""
    text = re.sub(r"\([^)]*\)", " ", text.lower())
    text = re.sub(r"\s+", " ", text).strip()
    if _CONDITION_WORDS.match(text) and "," in text:
        text = text.split(",", 1)[1]
    return _CLAUSE_END.split(text.strip())[0].strip(" .-~")


def _phrase(comment_lines: list[str], max_words: int = 10) -> str | None:
    """A phase name from the comment lines written above a branch, or None if they are code."""
    lines = [line.strip().lstrip("#").strip().rstrip("/").strip() for line in comment_lines]
    lines = [line for line in lines if line and not _CODE_COMMENT.match(line)]
    if not lines:
        return None
    phrase = _shorten(" ".join(lines))
    if len(phrase.split()) > max_words:
        phrase = _shorten(lines[0])
    return phrase or None


def _branch(statement: ast.stmt, source: _Source) -> tuple[ast.If | None, bool]:
    """The nearest `if` around `statement` and whether it sits in that `if`'s else-branch."""
    node: ast.AST = statement
    while True:
        parent = source.parents.get(id(node))
        if parent is None or isinstance(parent, ast.FunctionDef):
            return None, False
        if isinstance(parent, ast.If):
            return parent, not any(node is s for s in parent.body)
        node = parent


def _block_of(statement: ast.stmt, source: _Source) -> tuple[list[ast.stmt], bool]:
    """The statement list holding `statement` and whether it is the function's own body."""
    parent = source.parents[id(statement)]
    for name in ("body", "orelse", "finalbody"):
        block = getattr(parent, name, None)
        if isinstance(block, list) and any(s is statement for s in block):
            return block, isinstance(parent, ast.FunctionDef) and name == "body"
    return [statement], False


def _name_from_comments(site: _Site, source: _Source) -> str | None:
    # 1. Comments right above the statement, or above the simple statements leading to it in
    #    its block (`# move up` / `pos_new = ...` / `return pos_new`).
    phrase = _phrase(source.comments_above(site.statement.lineno))
    if phrase:
        return phrase
    block, is_function_body = _block_of(site.statement, source)
    index = next(i for i, s in enumerate(block) if s is site.statement)
    for i in range(index - 1, -1, -1):
        if isinstance(block[i], _COMPOUND):
            break
        phrase = _phrase(source.comments_above(block[i].lineno))
        if phrase:
            # In the function body, comments before any branch describe the setup instead.
            after_branch = any(isinstance(s, _COMPOUND) for s in block[:i])
            return phrase if after_branch or not is_function_body else None
    # 2. Comments above the header (`if`, `elif` or `else`) of the branch it belongs to.
    branch, in_else = _branch(site.statement, source)
    if branch is None:
        return None
    if in_else:
        last_body_line = branch.body[-1].end_lineno or branch.body[-1].lineno
        header = next(
            (ln for ln in source.else_lines if last_body_line < ln <= branch.orelse[0].lineno),
            None,
        )
        if header is None:
            return None
    else:
        header = branch.lineno
    return _phrase(source.comments_above(header))


def _readable(expr: ast.expr) -> str:
    text = ast.unparse(expr)
    text = re.sub(r"o_d\[['\"](\w+)['\"]\]", r"\1", text)
    return text.replace("np.linalg.", "").replace("np.", "")


def _name_from_condition(site: _Site, source: _Source, k: int, n_sites: int) -> str:
    branch, in_else = _branch(site.statement, source)
    if branch is None:
        if n_sites == 1:
            return f"phase {k}: move to {_readable(site.target)}"
        return f"phase {k}: otherwise"
    test = _negated(branch.test) if in_else else _readable(branch.test)
    return f"phase {k}: {test}"


_INVERSE_OPS: dict[type, ast.cmpop] = {
    ast.Gt: ast.LtE(), ast.GtE: ast.Lt(), ast.Lt: ast.GtE(), ast.LtE: ast.Gt(),
    ast.Eq: ast.NotEq(), ast.NotEq: ast.Eq(),
}  # fmt: skip


def _negated(test: ast.expr) -> str:
    """The condition of an else-branch, written positively where that is simple."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _readable(test.operand)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _INVERSE_OPS:
        inverse = _INVERSE_OPS[type(test.ops[0])]
        return _readable(ast.Compare(test.left, [inverse], test.comparators))
    return f"not ({_readable(test)})"


def _phase_names(sites: list[_Site], source: _Source) -> tuple[str, ...]:
    names: list[str] = []
    for k, site in enumerate(sites):
        name = _name_from_comments(site, source) or _name_from_condition(
            site, source, k, len(sites)
        )
        if name in names:
            name = f"{name} (phase {k})"
        names.append(name)
    return tuple(names)


# --- instrumenting the policy ------------------------------------------------------------------


class _NumberPhases(ast.NodeTransformer):
    """Tag each phase site with its index k: `return X` → `return (k, X)` and `move(a, b, p)` →
    `__phase_move__(k, a, b, p)`. Only the sites found by `_sites` are in `index`, so returns
    and calls of nested scopes stay as they are."""

    def __init__(self, index: dict[int, int]) -> None:
        self.index = index

    def visit_Return(self, node: ast.Return) -> ast.AST:
        self.generic_visit(node)
        k = self.index.get(id(node))
        if k is not None and node.value is not None:
            node.value = ast.Tuple([ast.Constant(k), node.value], ast.Load())
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        k = self.index.get(id(node))
        if k is not None:
            node.func = ast.Name("__phase_move__", ast.Load())
            node.args = [ast.Constant(k), *node.args]
        return node


@dataclass(frozen=True)
class _Program:
    """A policy class's phases and its instrumented target function."""

    phases: tuple[str, ...]
    mode: str
    """"returns": `fn(o_d) -> (k, target)`; "moves": `make(record)(policy, obs)`."""
    fn: Callable[..., Any]
    static: bool


def _defining_class(cls: type, name: str) -> type | None:
    for klass in cls.__mro__:
        if name in vars(klass) and klass is not Policy:
            return klass
    return None


def _compile(function: ast.FunctionDef, module_name: str, wrap_recorder: bool) -> Callable:
    function.name = "__instrumented__"
    function.decorator_list = []
    if wrap_recorder:
        # def __make__(__phase_move__): <function>; return __instrumented__
        module = ast.parse("def __make__(__phase_move__):\n    pass\n    return __instrumented__")
        module.body[0].body[0] = function  # type: ignore[attr-defined]
    else:
        module = ast.Module([function], [])
    ast.fix_missing_locations(module)
    namespace = dict(vars(sys.modules[module_name]))
    exec(compile(module, f"<instrumented {module_name}>", "exec"), namespace)
    return namespace["__make__" if wrap_recorder else "__instrumented__"]


@functools.cache
def _program(cls: type) -> _Program:
    """Analyse and instrument one policy class (once per process)."""
    klass = _defining_class(cls, "_desired_pos")
    mode, name = ("returns", "_desired_pos") if klass is not None else ("moves", "get_action")
    klass = klass or _defining_class(cls, "get_action")
    if klass is None:
        raise TypeError(f"{cls.__name__} has neither _desired_pos nor get_action")
    source = _module_source(klass.__module__)
    function = source.function(klass.__name__, name)
    sites = _sites(function, source, mode)
    if not sites:
        raise TypeError(f"{klass.__name__}.{name}: no phases found")
    phases = _phase_names(sites, source)
    # Re-parse so the rewrite cannot disturb the analysed tree.
    fresh = _Source.of_module(klass.__module__)
    fresh_function = fresh.function(klass.__name__, name)
    fresh_sites = _sites(fresh_function, fresh, mode)
    index = {id(site.node): k for k, site in enumerate(fresh_sites)}
    _NumberPhases(index).visit(fresh_function)
    fn = _compile(fresh_function, klass.__module__, wrap_recorder=mode == "moves")
    static = isinstance(vars(klass)[name], staticmethod)
    return _Program(phases, mode, fn, static)


def _recorder(record: list[tuple[int, Any]]) -> Callable[..., Any]:
    from metaworld.policies.policy import move

    def phase_move(k: int, from_xyz: Any, to_xyz: Any, p: float) -> Any:
        record.append((k, np.array(to_xyz, dtype=np.float64)))
        return move(from_xyz, to_xyz, p)

    return phase_move


def _as_xyz(value: Any) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()


def _positions(parsed: Mapping[str, Any], state: np.ndarray) -> dict[str, np.ndarray]:
    """hand, object, goal, then the policy's other parsed 3-D positions (copies)."""
    vectors = {
        k: np.array(v, dtype=np.float64)
        for k, v in parsed.items()
        if isinstance(v, np.ndarray) and v.shape == (3,) and not k.startswith("unused")
    }
    object_key = next(
        (k for k in vectors if k.endswith("_pos") and k not in ("hand_pos", "goal_pos")), None
    )
    positions = {
        "hand": vectors.get("hand_pos", np.array(state[0:3], dtype=np.float64)),
        "object": (vectors[object_key] if object_key else np.array(state[4:7], dtype=np.float64)),
        "goal": np.array(state[36:39], dtype=np.float64),
    }
    for key, value in vectors.items():
        if key in ("hand_pos", "goal_pos", object_key):
            continue
        name = key.removesuffix("_pos")
        positions[name if name not in positions else key] = value
    return positions


# --- the expert ----------------------------------------------------------------------------------


def _task_name(task: str) -> str:
    """The canonical task name (`-v3` may be left off), or a one-line error: the names of
    Meta-World's own table, so the experts need nothing of `envs.metaworld` (which names them as
    its family's expert)."""
    names = tuple(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
    if task in names:
        return task
    if f"{task}-v3" in names:
        return f"{task}-v3"
    raise unknown("Meta-World task", task, names)


class ScriptedExpert:
    """Meta-World's scripted policy for one task, returning its procedure with each action.

    `act(state)` gives `(action, procedure)`; calling the expert gives the action alone (the
    policy interface evaluation uses). The action is bit-for-bit Meta-World's
    `policy.get_action(state)`; it is not clipped (the environment clips to [-1, 1]).
    """

    def __init__(self, task: str) -> None:
        self.task = _task_name(task)
        self.policy: Policy = ENV_POLICY_MAP[self.task]()
        self._program = _program(type(self.policy))
        self.phases: tuple[str, ...] = self._program.phases
        """Readable phase names in source order; `Procedure.phase` indexes them."""

    def __repr__(self) -> str:
        return f"ScriptedExpert({self.task!r}, phases={len(self.phases)})"

    @staticmethod
    def _state(obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        state = np.asarray(obs["state"] if isinstance(obs, Mapping) else obs)
        if state.shape != (STATE_SIZE,):
            raise ValueError(f"expected a ({STATE_SIZE},) Meta-World state, got {state.shape}")
        return state

    def action(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Meta-World's action (4 float32: Δxyz in [-1, 1] units, grab effort) for `obs`."""
        state = self._state(obs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MOVE_WARNING)
            return np.asarray(self.policy.get_action(state.copy()), dtype=np.float32)

    def __call__(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """The action for a state or an observation dict with "state"."""
        return self.action(obs)

    def act(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> tuple[np.ndarray, Procedure]:
        """The action and the procedure behind it."""
        state = self._state(obs)
        action = self.action(state)
        parsed = self.policy._parse_obs(state.copy())
        positions = _positions(parsed, state)  # before the policy code can modify `parsed`
        program = self._program
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MOVE_WARNING)
            if program.mode == "returns":
                fn = program.fn if program.static else functools.partial(program.fn, self.policy)
                phase, target = fn(parsed)
            else:
                record: list[tuple[int, Any]] = []
                program.fn(_recorder(record))(self.policy, state.copy())
                if not record:
                    raise RuntimeError(f"{self.task}: the policy made no move")
                phase, target = record[-1]
        procedure = Procedure(
            positions=positions,
            phase=int(phase),
            phase_name=self.phases[phase],
            target=_as_xyz(target),
            grab_effort=float(action[-1]),
        )
        return action, procedure


class FamilyExpert:
    """A task's scripted expert as the Meta-World family offers it (`envs.family.Expert`): the
    action as the env executes it and the procedure as per-step store keys."""

    def __init__(self, task: str) -> None:
        self.scripted = ScriptedExpert(task)

    def act(self, observation: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        command, procedure = self.scripted.act(observation)
        # The action as executed: the experts' gains overshoot the action space (commands up to
        # ±12), which the env clips; storing the command would make min-max normalization
        # squeeze every executable action into a tenth of the network's range.
        action = np.clip(command, -1.0, 1.0).astype(np.float32)
        return action, {f"procedure/{k}": v for k, v in procedure.as_arrays().items()}


def expert_for(task: str) -> ScriptedExpert:
    """The scripted expert of a Meta-World task (`-v3` may be left off)."""
    return ScriptedExpert(task)
