"""Attack settings of an evaluation: the Appendix C preset overridden by the caller's settings
(:func:`resolve_attack_settings`), unbounded attacks (:func:`is_unbounded`), checks of the settings
against the attack class, and the recorded name of the attack implementation (:func:`impl_name`)."""
from __future__ import annotations

import inspect
import warnings

from .. import attacks

#: L-inf-only settings that an unbounded attack (CW-L2) ignores, so that one ``--eps`` /
#: ``--step-size`` can be given for a list of attacks (``lit-caps evaluate --attacks pgd cw --eps 0.2``).
_LINF_ONLY = ("eps", "step_size", "random_start")
#: generic settings an attack class without them ignores (FGSM has no ``steps``, CW no ``step_size``).
_GENERIC = ("steps", "step_size", "random_start")


def impl_name(fn) -> str:
    """The recorded ``attack_impl``: ``module.qualname`` of ``attack_fn`` (None: build_attack)."""
    if fn is None:
        return "lit_caps.attacks.build_attack"
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    qn = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}.{qn}"


def _attack_class(attack_name: str):
    return attacks.ATTACKS.get(attack_name)


def is_unbounded(attack_name: str, preset_settings: dict | None = None, attack_fn=None) -> bool:
    """True for attacks without an L-inf bound (CW-L2): the attack class says ``requires_eps =
    False`` (default attacks), or, for a custom ``attack_fn``, the known preset's eps is None."""
    cls = _attack_class(attack_name) if attack_fn is None else None
    if cls is not None:
        return not getattr(cls, "requires_eps", True)
    return preset_settings is not None and "eps" in preset_settings and preset_settings["eps"] is None


def resolve_attack_settings(dataset_name: str, attack_name: str, eps: float | None, settings: dict | None,
                            attack_fn=None) -> dict:
    """Appendix C preset of (dataset, attack), overridden by ``settings``, then by ``eps``
    (``eps=None``: the preset's, or None for unbounded attacks such as CW-L2).

    Unbounded attacks (CW-L2, :func:`is_unbounded`) ignore the L-inf-only settings ``eps``,
    ``step_size`` and ``random_start`` (from ``eps`` or ``settings``, with a warning): their ``eps``
    is always None, so one ``--eps`` can serve a list of attacks. Likewise, with the default
    attacks, the generic ``steps`` / ``step_size`` / ``random_start`` are dropped (with a warning)
    for a class that has no such setting (FGSM: one step); any other setting the attack class does
    not take is an error naming the ones it takes.

    With a custom ``attack_fn`` a missing preset (unknown attack name, or no attacks package) is
    an empty dict; with the default attacks a missing preset is an error.

    The warnings name the caller of this function's caller (``stacklevel``): call it directly from
    :func:`~lit_caps.evaluation.evaluate_attack`, not from a helper of it.
    """
    known = None
    try:
        known = dict(attacks.preset(dataset_name, attack_name))
    except Exception:
        if attack_fn is None:
            raise
    base = dict(known or {})
    base.update(settings or {})
    if eps is not None:
        base["eps"] = float(eps)
    if is_unbounded(attack_name, known, attack_fn):
        dropped = {k: base.pop(k) for k in _LINF_ONLY if base.get(k) is not None}
        if dropped:
            warnings.warn(f"{attack_name} has no L-inf bound: ignoring {dropped}", stacklevel=3)
        base["eps"] = None
    base["eps"] = None if base.get("eps") is None else float(base["eps"])
    if base.get("loss") == "ce":  # the paper's loss, the default: results keep the identity they always had
        base.pop("loss")
    if attack_fn is None:
        _check_kwargs(attack_name, base)
    return base


def _check_kwargs(attack_name: str, settings: dict) -> None:
    """Drops the generic settings the attack class lacks (warning); a clear error for any other
    setting it does not take (instead of a TypeError mid-run). Edits ``settings`` in place."""
    cls = _attack_class(attack_name)
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"self", "model"}
    dropped = {k: settings.pop(k) for k in _GENERIC if k in settings and k not in accepted}
    if dropped:
        warnings.warn(f"{attack_name} has no setting(s) {sorted(dropped)}: ignoring {dropped}", stacklevel=4)
    extra = sorted(set(settings) - accepted - {"beta"})  # beta: checked by the attack (R-* only)
    if extra:
        raise ValueError(f"{attack_name} does not take the setting(s) {extra}; it takes {sorted(accepted)}")
