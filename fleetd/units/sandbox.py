"""The Jinja environment units render in: sandboxed, bounded, and values stay values.

Jinja's sandbox keeps a template from Python's internals. This one also reports every
step to the render's budget (``fleetd.units.budget``) so that time, size and nesting
are bounded, and keeps every value a template writes on its own line:

- ``BoundedEnvironment`` intercepts every call (``call``), arithmetic operator
  (``intercepted_binops``) and filter (each wrapped by ``_guarded``): inputs are
  measured, the size of a result is estimated before it is built (``'a' * 10**10`` is
  refused, not attempted), the result is measured and counted;
- ``instrument`` rewrites a parsed template before it is compiled: every ``for`` loop
  iterates through ``budget.counted`` (one step per item), every ``~`` goes through a
  bounded join, every piece of output (literal text too: a macro's output is buffered,
  not streamed) is counted, and every ``{{ expression }}`` is checked to be one value:
  no line break, no control character, so ``--var`` or a machine's metadata cannot
  add a directive. The output of a macro (or ``caller()``, a recursive ``loop()``,
  ``self.block()``) is template text and may hold lines: its own ``{{ }}`` were checked.

The added filters are ``pass_context`` so Jinja's optimizer never runs them at compile
time, outside any budget.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from jinja2 import nodes, pass_context
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.runtime import BlockReference, Context, LoopContext, Macro
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

from fleetd.units import budget, values
from fleetd.units.budget import Refused

Estimate = Callable[[Sequence[Any], Dict[str, Any]], int]


class TemplateText(str):
    """Output of a macro, caller(), recursive loop() or block: the template's own
    text, which may hold lines (every value written into it was checked)."""


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox, reporting every call and arithmetic operator to the budget."""

    intercepted_binops = frozenset(["+", "-", "*", "/", "//", "%", "**"])

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        spend = budget.current()
        spend.tick()
        spend.inputs(args, kwargs)
        _estimate_call(obj, args, kwargs)
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (budget.counted(args[0]), *args[1:])
        with spend.nested():
            result = super().call(context, obj, *args, **kwargs)
        spend.built(result)
        if isinstance(obj, (Macro, LoopContext, BlockReference)) and isinstance(result, str):
            return TemplateText(result)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        spend = budget.current()
        spend.tick()
        spend.inputs(left, right)
        if operator == "*":
            if isinstance(left, (str, bytes, list, tuple)):
                budget.check_estimate("'*'", budget.repeat(left, right))
            elif isinstance(right, (str, bytes, list, tuple)):
                budget.check_estimate("'*'", budget.repeat(right, left))
        elif operator == "**":
            budget.power_bits(left, right)
        elif operator == "%":
            budget.check_estimate("'%'", budget.printf(left, right))
        return spend.built(super().call_binop(context, operator, left, right))


def _arg(args: Sequence[Any], kwargs: Dict[str, Any], index: int, name: str,
         default: Any = None) -> Any:
    """An operation's argument, given by position or by name."""
    return args[index] if len(args) > index else kwargs.get(name, default)


# str and bytes methods whose result can be much larger than their inputs
_METHODS: Dict[str, Estimate] = {
    "center": lambda a, k: budget.width(".center()", _arg(a, k, 1, "width", 0)),
    "ljust": lambda a, k: budget.width(".ljust()", _arg(a, k, 1, "width", 0)),
    "rjust": lambda a, k: budget.width(".rjust()", _arg(a, k, 1, "width", 0)),
    "zfill": lambda a, k: budget.width(".zfill()", _arg(a, k, 1, "width", 0)),
    "expandtabs": lambda a, k: budget.expandtabs(a[0], _arg(a, k, 1, "tabsize", 8)),
    "replace": lambda a, k: budget.replace(a[0], _arg(a, k, 1, "old"), _arg(a, k, 2, "new"),
                                           _arg(a, k, 3, "count", -1)),
    "translate": lambda a, k: budget.translate(a[0], _arg(a, k, 1, "table")),
}


def _estimate_call(obj: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
    """Refuse a call whose result would be too big before it is made."""
    name = getattr(obj, "__name__", "")
    # the sandbox hands out str.format wrapped (in a function): the string is inside
    formatted: Any = getattr(getattr(obj, "__wrapped__", None), "__self__", None)
    if name in ("format", "format_map") and isinstance(formatted, str):
        fields = args[0] if name == "format_map" and args else kwargs
        budget.check_estimate(f".{name}()", budget.str_format(
            formatted, args if name == "format" else (), fields))
        return
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, (str, bytes)) and name == "join":
        _check_join(owner, args)
    elif isinstance(owner, (str, bytes)) and name in _METHODS:
        budget.check_estimate(f".{name}()", _METHODS[name]((owner, *args), kwargs))
    elif isinstance(owner, int) and name == "to_bytes":
        budget.width(".to_bytes()", _arg(args, kwargs, 0, "length", 1))


def _check_join(separator: Any, args: Tuple[Any, ...]) -> None:
    """``sep.join(x)``: only of a collection (measuring an iterator would use it up),
    and not too much of it."""
    items = args[0] if args else ()
    if not isinstance(items, budget.COLLECTIONS):
        raise Refused(".join() takes a list here; write |join for anything else")
    budget.check_estimate(".join()", budget.joined(list(items), separator))


# -- filters --

_FILTER_ESTIMATES: Dict[str, Estimate] = {
    "center": lambda a, k: budget.size(a[0]) + budget.width("|center",
                                                            _arg(a, k, 1, "width", 80)),
    "indent": lambda a, k: budget.lines_prefixed(a[0], _indent_width(_arg(a, k, 1, "width", 4))),
    "wordwrap": lambda a, k: budget.broken(a[0], _arg(a, k, 4, "wrapstring") or "\n"),
    "replace": lambda a, k: budget.replace(str(a[0]), _arg(a, k, 1, "old"),
                                           _arg(a, k, 2, "new"), _arg(a, k, 3, "count", -1)),
    "format": lambda a, k: budget.printf(str(a[0]), k or tuple(a[1:])),
    "batch": lambda a, k: budget.width("|batch", _arg(a, k, 1, "linecount", 1))
    * (1 + budget.size(_arg(a, k, 2, "fill_with"))),
    "slice": lambda a, k: budget.width("|slice", _arg(a, k, 1, "slices", 1))
    * (1 + budget.size(_arg(a, k, 2, "fill_with"))),
    "tojson": lambda a, k: budget.size(a[0])
    * (2 + budget.width("|tojson", _arg(a, k, 1, "indent", 0) or 0)),
    "urlize": lambda a, k: budget.size(a[0]) * 12,
}


def _indent_width(width: Any) -> int:
    return budget.width("|indent", width) if isinstance(width, int) else len(str(width))


def _leading(func: Callable[..., Any], context: Context) -> Tuple[Any, ...]:
    """What Jinja passes a filter before the value (pass_context & co)."""
    kind = getattr(func, "jinja_pass_arg", None)
    if kind is None:
        return ()
    return {"context": (context,), "eval_context": (context.eval_ctx,),
            "environment": (context.environment,)}[kind.name]


def _guarded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's filter ``name``, bounded: inputs measured, a result that could be too
    big refused before it is built, the result measured, an iterator counted."""
    estimate = _FILTER_ESTIMATES.get(name)

    @pass_context
    @functools.wraps(func)
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        spend = budget.current()
        spend.tick()
        spend.inputs(args, kwargs)
        if estimate is not None:
            budget.check_estimate(f"|{name}", estimate(args, kwargs))
        result = func(*_leading(func, context), *args, **kwargs)
        if hasattr(result, "__next__"):
            return budget.counted(result)
        return spend.built(result)

    guarded.__dict__.pop("__wrapped__", None)
    return guarded


def _items(context: Context, value: Iterable[Any], attribute: Any) -> List[Any]:
    """The items |join and |sum combine, counted, each one's attribute if asked."""
    items = list(budget.counted(value))
    if attribute is not None:
        getter = make_attrgetter(context.environment, attribute)
        items = [getter(item) for item in items]
    budget.current().inputs(items)
    return items


@pass_context
def _join(context: Context, value: Iterable[Any], d: Any = "", attribute: Any = None) -> str:
    """Jinja's |join, sized before it is built (autoescape is off for units)."""
    spend = budget.current()
    spend.tick()
    items = _items(context, value, attribute)
    budget.check_estimate("|join", budget.joined(items, d))
    return str(spend.built(str(d).join(str(item) for item in items)))


@pass_context
def _sum(context: Context, iterable: Iterable[Any], attribute: Any = None,
         start: Any = 0) -> Any:
    """Jinja's |sum, sized before it is built (a sum of lists is a concatenation)."""
    spend = budget.current()
    spend.tick()
    items = _items(context, iterable, attribute)
    budget.check_estimate("|sum", budget.size(start) + budget.size(items))
    return spend.built(sum(items, start))


def filters() -> Dict[str, Callable[..., Any]]:
    """Every Jinja filter, bounded, and the ones ``instrument`` adds."""
    bounded = {name: _guarded(name, func) for name, func in FILTERS.items()}
    bounded.update(join=_join, sum=_sum)
    bounded.update({STEPS: _steps, CONCAT: _concat, VALUE: _value, TEXT: _text,
                    ARGUMENT: _argument})
    return bounded


# -- what instrument() adds to a template --

STEPS, CONCAT, VALUE, TEXT, ARGUMENT = ("fleet_steps", "fleet_concat", "fleet_value",
                                        "fleet_text", "fleet_argument")


@pass_context
def _steps(context: Context, iterable: Iterable[Any]) -> Iterable[Any]:
    return budget.counted(iterable)


@pass_context
def _concat(context: Context, parts: List[Any]) -> str:
    spend = budget.current()
    spend.tick()
    spend.inputs(parts)
    return str(spend.built("".join(str(p) for p in parts)))


@pass_context
def _value(context: Context, value: Any, label: str) -> str:
    """A ``{{ expression }}`` as the unit will hold it: one value on its line."""
    spend = budget.current()
    spend.check_time()
    spend.inputs(value)
    text = str(value)
    if not isinstance(value, TemplateText):
        _one_value(text, label)
    spend.spend(len(text))
    return text


@pass_context
def _text(context: Context, value: Any) -> str:
    """The template's own text, counted as written (a macro's output is buffered)."""
    spend = budget.current()
    spend.check_time()
    text = str(value)
    spend.spend(len(text))
    return text


@pass_context
def _argument(context: Context, value: Any, label: str) -> Any:
    """An argument of a ``{% filter %}`` block: it writes into the block's text."""
    if isinstance(value, str):
        _one_value(value, label)
    return value


def _one_value(text: str, label: str) -> None:
    problem = values.problem(text)
    if problem is not None:
        raise Refused(f"{{{{ {label} }}}} {problem}: a value must stay on its line "
                      "(write lines in the unit, or in a macro)")


class _Instrument(NodeTransformer):
    """The rewriting ``instrument`` does, node by node (children first)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(node.iter, STEPS)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        """``a ~ b`` becomes ``[a, b]|fleet_concat``: Concat has no hook of its own."""
        self.generic_visit(node)
        return _filter(nodes.List(list(node.nodes), lineno=node.lineno), CONCAT)

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> nodes.Node:
        self.generic_visit(node)
        _check_arguments(node.filter)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        # the template's own text (and constants in it) may hold lines; values may not
        node.nodes = [_filter(child, TEXT) if isinstance(child, (nodes.TemplateData, nodes.Const))
                      else _filter(child, VALUE, describe(child)) for child in node.nodes]
        return node


def instrument(template: nodes.Template) -> nodes.Template:
    """Rewrite a parsed template in place so that it reports to its budget."""
    _Instrument().visit(template)
    return template


def _check_arguments(call: Optional[nodes.Filter]) -> None:
    """A ``{% filter %}`` block's arguments (of each filter in its chain) are values."""
    while call is not None:
        call.args = [a if isinstance(a, nodes.Const) else _filter(a, ARGUMENT, describe(a))
                     for a in call.args]
        for keyword in call.kwargs:
            if not isinstance(keyword.value, nodes.Const):
                keyword.value = _filter(keyword.value, ARGUMENT, describe(keyword.value))
        call = call.node if isinstance(call.node, nodes.Filter) else None


def _filter(node: nodes.Node, name: str, *labels: str) -> nodes.Filter:
    """``node|name(*labels)``, on the line of ``node``."""
    return nodes.Filter(node, name, [nodes.Const(label) for label in labels], [], None, None,
                        lineno=node.lineno)


def describe(node: nodes.Node) -> str:
    """An expression as its author wrote it, near enough to find it on its line."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{describe(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem):
        return f"{describe(node.node)}[{describe(node.arg)}]"
    if isinstance(node, nodes.Const):
        return repr(node.value)
    if isinstance(node, nodes.Filter) and node.node is not None:
        return f"{describe(node.node)}|{node.name}"
    if isinstance(node, nodes.Call):
        return f"{describe(node.node)}(...)"
    return "expression"
