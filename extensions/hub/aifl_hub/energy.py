"""Energy of a session in plain words, estimated from the site file's ``energy`` section.

The model (every figure from the site file; labelled "estimate" wherever it is shown):

* one GPU at utilisation ``u`` (0–1) draws ``idle + u × (full − idle)`` watts, with ``full`` from
  ``gpu_watts`` and ``idle`` from ``gpu_idle_watts`` for the GPU type (0 W when the site gives no idle
  figure); ``u`` is the caller's, else ``typical_gpu_utilisation``, else 1 (full load, an upper bound);
* each allocated CPU core draws ``cpu_core_watts`` and each allocated GB of memory ``memory_gb_watts``,
  whether used or not (they are held for the session);
* the facility draws ``pue`` times what the hardware draws (cooling, power conversion);
* energy in kWh = watts × hours / 1000; in everyday terms: how far an electric car drives on it
  (``everyday_km_per_kwh``, left out when the site gives no figure).

Figures are shown with two significant digits: the model is not more precise than that. A result
carries its ``source`` so measured figures (NVML on real GPU nodes) can later sit beside estimates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from babel.numbers import format_decimal

from .i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, gettext_for

SOURCE_LABELS = {"estimate": N_("estimate")}
"""How each kind of figure is labelled where it is shown."""


@dataclass(frozen=True)
class Estimate:
    """Energy of a session: ``watts`` drawn on average (facility, PUE included) over ``hours``."""

    kwh: float
    watts: float
    hours: float
    gpu_utilisation: float
    km: float | None
    source: Literal["estimate"] = "estimate"


def estimate_session(energy: Mapping[str, Any], gpu_type: str | None, gpus: int, cpus: int, memory_gb: float,
                     hours: float, utilisation: float | None = None) -> Estimate:
    """Estimate a session's energy with the site's ``energy`` model (see the module docstring).

    Raises :class:`ValueError` for a GPU type the model has no watts for, or a utilisation outside 0–1.
    """
    if utilisation is None:
        utilisation = energy.get("typical_gpu_utilisation", 1.0)
    if not 0 <= utilisation <= 1:
        raise ValueError(f"GPU utilisation must be between 0 and 1, not {utilisation}")
    gpu_watts = 0.0
    if gpus:
        if gpu_type not in energy["gpu_watts"]:
            raise ValueError(f"the energy model has no watts for GPU type {gpu_type!r}")
        full = energy["gpu_watts"][gpu_type]
        idle = energy.get("gpu_idle_watts", {}).get(gpu_type, 0.0)
        gpu_watts = idle + utilisation * (full - idle)
    hardware = gpus * gpu_watts + cpus * energy["cpu_core_watts"] + memory_gb * energy["memory_gb_watts"]
    watts = hardware * energy["pue"]
    kwh = watts * hours / 1000
    km_per_kwh = energy.get("everyday_km_per_kwh")
    return Estimate(kwh=kwh, watts=watts, hours=hours, gpu_utilisation=utilisation,
                    km=kwh * km_per_kwh if km_per_kwh is not None else None)


def _locale(lang: str) -> str:
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def significant(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` significant digits (5.4648 → 5.5, 21.86 → 22, 0.03496 → 0.035)."""
    if value == 0:
        return 0.0
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_number(value: float, lang: str) -> str:
    """``value`` with two significant digits, written the way ``lang`` writes numbers (5,5 in Dutch)."""
    return format_decimal(significant(value), format="#,##0.###", locale=_locale(lang))


def describe_estimate(estimate: Estimate, lang: str) -> str:
    """``estimate`` in plain words in ``lang``: energy, duration, its source and the everyday comparison."""
    _ = gettext_for(lang)
    hours = format_decimal(round(estimate.hours, 1), format="#,##0.#", locale=_locale(lang))
    duration = _("1 hour") if estimate.hours == 1 else _("{hours} hours").format(hours=hours)
    text = _("About {kwh} kWh for {duration} ({source})").format(
        kwh=format_number(estimate.kwh, lang), duration=duration, source=_(SOURCE_LABELS[estimate.source]))
    if estimate.km is None:
        return text
    return _("{energy}, as much as an electric car uses to drive {km} km").format(
        energy=text, km=format_number(estimate.km, lang))
