"""The facility page: a JupyterHub service showing who gets the GPUs, in Dutch and English.

A small tornado app that the hub runs as a managed service (``python -m aifl_hub.facility_service
--site-file …``). Users log in through the hub (OAuth, :class:`~jupyterhub.services.auth.HubOAuthenticated`);
anyone logged in sees the page; the machine-readable routes are for admins (and, for the metrics, for
hub services with access to this one, such as a Prometheus scraper with its own service token).

Routes, under the service's prefix (``/services/facility/``):

* ``""`` — the page: the regional share today / 7 / 30 days as inline SVG bars per category with the
  25 % line, median waits, GPUs in use now, the visitor's organisation this month, and what the
  promise means (no scripts, no external assets: Bootstrap 5 comes from the hub's own static files);
* ``language`` — POST: remember ``nl`` or ``en`` (cookie ``aifl-lang`` on the service's path);
* ``api/organisation`` — JSON: the visitor's organisation this month (any logged-in user);
* ``api/figures`` (JSON), ``report.csv?month=YYYY-MM`` (CSV) — admins;
* ``metrics`` — Prometheus text: admins and hub services.

The figures come from :mod:`aifl_hub.facility` (Slurm's own accounting), cached for a short while.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from babel.numbers import format_percent
from jinja2 import Environment, PackageLoader, select_autoescape
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from markupsafe import Markup
from tornado import ioloop, web

from .energy import EnergyReport, energy_section
from .facility import (
    ALL_CATEGORIES,
    OTHER,
    REGIONAL,
    REGIONAL_TARGET,
    Facility,
    FacilityCache,
    MonthError,
    PeriodFigures,
    figures_json,
    format_hours,
    month_bounds,
    organisation_json,
    organisation_month,
    prometheus_text,
    report_csv,
    this_month,
    usage_line,
)
from .i18n import DEFAULT_LANGUAGE, LANGUAGES, N_, gettext_for, pick_language
from .site import Site, load_site

log = logging.getLogger(__name__)

LANG_COOKIE = "aifl-lang"
COOKIE_MAX_AGE = 365 * 24 * 3600
LANGUAGE_NAMES = {"nl": "Nederlands", "en": "English"}


CATEGORY_LABELS = {"regional": N_("Regional"), "national": N_("National"), "european": N_("European"),
                   "training": N_("Training"), OTHER: N_("Other")}
PERIOD_LABELS = {"today": N_("Today"), "7d": N_("Last 7 days"), "30d": N_("Last 30 days")}
GROUP_LABELS = {REGIONAL: N_("Regional organisations"), OTHER: N_("Everyone else")}
# Bar colours (each at least 3:1 against white; the label next to each bar says the same in words).
COLOURS = {"regional": "#0a58ca", "national": "#6f42c1", "european": "#146c43", "training": "#b35c00",
           OTHER: "#5c636a"}
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

_templates = Environment(loader=PackageLoader(__package__, "templates/facility"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


# ---------------------------------------------------------------- words and pictures (pure)

def percent(value: float, lang: str) -> str:
    """``value`` (a fraction) as a whole percentage in ``lang``."""
    return format_percent(value, format="#,##0%", locale=lang)


def describe_wait(seconds: float | None, lang: str) -> str:
    """A median wait in plain words ("less than a minute", "12 min", "2 h 5 min")."""
    _ = gettext_for(lang)
    if seconds is None:
        return _("no GPU jobs started")
    if seconds < 60:
        return _("less than a minute")
    minutes = round(seconds / 60)
    if minutes < 60:
        return _("{minutes} min").format(minutes=minutes)
    return _("{hours} h {minutes} min").format(hours=minutes // 60, minutes=minutes % 60)


def share_sentence(period: PeriodFigures, lang: str) -> str:
    """The period's regional share against the promise, in one sentence."""
    _ = gettext_for(lang)
    share = period.share
    if share is None:
        return _("No GPU work in this period yet.")
    values = {"share": percent(share, lang), "target": percent(REGIONAL_TARGET, lang)}
    if share >= REGIONAL_TARGET:
        return _("Regional organisations got {share} of the GPU hours: above the {target} line.").format(**values)
    return _("Regional organisations got {share} of the GPU hours: below the {target} line.").format(**values)


def share_chart(period: PeriodFigures, lang: str) -> Markup:
    """The period's GPU-hours per category as horizontal bars (share of all), with the 25 % line, as SVG."""
    _ = gettext_for(lang)
    label_w, bar_w, value_w, top, row_h, bar_h = 130, 300, 190, 34, 30, 18
    width, height = label_w + bar_w + value_w, top + row_h * len(ALL_CATEGORIES) + 4
    total = period.total_gpu_hours
    uid = f"chart-{period.period}"
    title = _("{period}: GPU hours by kind of organisation").format(period=_(PERIOD_LABELS[period.period]))
    parts = [Markup('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
                    'aria-labelledby="{}-title {}-desc" class="aifl-chart" font-family="system-ui, sans-serif" '
                    'font-size="14"><title id="{}-title">{}</title><desc id="{}-desc">{}</desc>').format(
                        width, height, uid, uid, uid, title, uid, share_sentence(period, lang))]
    for i, cat in enumerate(ALL_CATEGORIES):
        y, hours = top + i * row_h, period.gpu_hours[cat]
        share = hours / total if total > 0 else 0.0
        value = _("{share} · {hours} GPU h").format(share=percent(share, lang), hours=format_hours(hours, lang))
        weight = "bold" if cat == REGIONAL else "normal"
        parts.append(Markup(
            '<text x="{}" y="{}" text-anchor="end" fill="currentColor" font-weight="{}">{}</text>'
            '<rect x="{}" y="{}" width="{}" height="{}" fill="#adb5bd" fill-opacity="0.25"/>'
            '<rect x="{}" y="{}" width="{:.1f}" height="{}" fill="{}"/>'
            '<text x="{}" y="{}" fill="currentColor" font-weight="{}">{}</text>').format(
                label_w - 8, y + 14, weight, _(CATEGORY_LABELS[cat]),
                label_w, y, bar_w, bar_h,
                label_w, y, bar_w * share, bar_h, COLOURS[cat],
                label_w + bar_w + 8, y + 14, weight, value))
    line_x = label_w + bar_w * REGIONAL_TARGET
    parts.append(Markup(
        '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#dc3545" stroke-width="2" stroke-dasharray="5 3"/>'
        '<text x="{}" y="{}" text-anchor="middle" fill="#dc3545" font-weight="bold">{}</text></svg>').format(
            line_x, top - 10, line_x, height - 2, line_x, top - 16,
            _("{target} line").format(target=percent(REGIONAL_TARGET, lang))))
    return Markup("").join(parts)


# ---------------------------------------------------------------- the service

@dataclass
class Service:
    """What every handler shares: the site, the cached Slurm figures, the hub's OAuth and URLs."""

    site: Site
    figures: FacilityCache
    hub_auth: HubOAuth
    prefix: str
    hub_base_url: str = "/"
    energy: EnergyReport | None = None


class FacilityHandler(HubOAuthenticated, web.RequestHandler):
    """Base: the hub's login, the visitor's language, pages from ``templates/facility``."""

    def initialize(self, service: Service) -> None:
        """Take the shared :class:`Service`."""
        self.service = service
        self.hub_auth = service.hub_auth

    def set_default_headers(self) -> None:
        """No caching of personal pages, no framing, nothing from elsewhere."""
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    @property
    def lang(self) -> str:
        """The remembered choice (``aifl-lang``), then Accept-Language, then the site's default."""
        site = self.service.site["site"]
        offered = tuple(site.get("languages", LANGUAGES))
        default = site.get("default_language", DEFAULT_LANGUAGE)
        lang = pick_language(self.request.headers.get("Accept-Language"), self.get_cookie(LANG_COOKIE), default)
        return lang if lang in offered else default

    def user_model(self, *, admin: bool = False, services: bool = False) -> dict[str, Any]:
        """The logged-in user (403 when nobody, or not an admin where ``admin``; services where ``services``)."""
        model = self.current_user
        if not model:
            raise web.HTTPError(403)
        if model.get("kind") == "service":
            if services:
                return model
            raise web.HTTPError(403)
        if admin and not model.get("admin"):
            raise web.HTTPError(403)
        return model

    def render_page(self, name: str, **values: Any) -> None:
        """Render ``name`` in the visitor's language."""
        lang = self.lang
        offered = self.service.site["site"].get("languages", LANGUAGES)
        hub = self.service.hub_base_url
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(_templates.get_template(name).render(
            _=gettext_for(lang), lang=lang, prefix=self.service.prefix,
            site_name=self.service.site["site"]["name"], xsrf_form_html=self.xsrf_form_html,
            languages=[(code, LANGUAGE_NAMES[code]) for code in offered] if len(offered) > 1 else [],
            hub_home=url_path_join(hub, "hub/home"), hub_logo=url_path_join(hub, "hub/logo"),
            hub_static=url_path_join(hub, "hub/static") + "/", **values))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A plain page in the visitor's language (no traceback)."""
        self.render_page("error.html", status_code=status_code)


class PageHandler(FacilityHandler):
    """``GET /``: the facility page (any logged-in hub user)."""

    @web.authenticated
    async def get(self) -> None:
        """Show the figures; a page saying so when Slurm does not answer."""
        model = self.user_model()
        lang = self.lang
        try:
            figures, _ = await self.service.figures.current()
        except Exception:
            log.exception("facility figures unavailable")
            self.set_status(503)
            self.render_page("unavailable.html")
            return
        self.render_page(
            "index.html", figures=figures, admin=bool(model.get("admin")), category_labels=CATEGORY_LABELS,
            usage=self.service.figures.home_usage(model["name"], lang), target=percent(REGIONAL_TARGET, lang),
            periods=[(p, PERIOD_LABELS[p.period], share_sentence(p, lang), share_chart(p, lang))
                     for p in figures.periods],
            waits=[(PERIOD_LABELS[p.period], {g: describe_wait(w, lang) for g, w in p.median_wait.items()})
                   for p in figures.periods],
            in_use=[(CATEGORY_LABELS[cat], n) for cat, n in figures.gpus_in_use.items()],
            in_use_total=sum(figures.gpus_in_use.values()), group_labels=GROUP_LABELS,
            hours=lambda value: format_hours(value, lang), updated=figures.generated_at.strftime("%H:%M"),
            month=this_month(figures.generated_at),
            energy=await energy_section(self.service.energy, self.service.figures.facility, lang,
                                        CATEGORY_LABELS, COLOURS))


class LanguageHandler(FacilityHandler):
    """``POST /language``: remember ``nl`` or ``en`` on the service's path, back to the page."""

    @web.authenticated
    def post(self) -> None:
        """Set the cookie (XSRF-checked like every form) and return to the page."""
        lang = self.get_body_argument("lang", "")
        if lang not in self.service.site["site"].get("languages", LANGUAGES):
            raise web.HTTPError(400)
        self.set_cookie(LANG_COOKIE, lang, path=self.service.prefix, max_age=COOKIE_MAX_AGE, httponly=True,
                        samesite="Lax", secure=self.request.protocol == "https")
        self.redirect(self.service.prefix, status=303)


class OrganisationHandler(FacilityHandler):
    """``GET /api/organisation``: the visitor's organisation this month (``{}`` when they have none)."""

    async def get(self) -> None:
        """JSON for the logged-in user."""
        model = self.user_model()
        figures, users = await self.service.figures.current()
        org = users.get(model["name"])
        row = organisation_month(figures, org) if org else None
        body = {**organisation_json(row), "line": usage_line(row, self.lang)} if row else {}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class FiguresHandler(FacilityHandler):
    """``GET /api/figures``: every figure as JSON (admins)."""

    async def get(self) -> None:
        """JSON from :func:`~aifl_hub.facility.figures_json`."""
        self.user_model(admin=True)
        figures, _ = await self.service.figures.current()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(figures_json(figures)))


class ReportHandler(FacilityHandler):
    """``GET /report.csv?month=YYYY-MM``: the monthly report per organisation (admins; default this month)."""

    async def get(self) -> None:
        """CSV from :func:`~aifl_hub.facility.report_csv`, read from Slurm now (not cached)."""
        self.user_model(admin=True)
        now = self.service.figures.facility.clock()
        month = self.get_query_argument("month", "") or this_month(now)
        try:
            month_bounds(month, now)
        except MonthError as exc:
            _ = gettext_for(self.lang)
            message = (_("The month {month} has not begun yet. Choose {current} or an earlier month.")
                       if exc.not_begun else _("Write the month as year-month, for example {current}."))
            self.set_status(400)
            self.render_page("error.html", status_code=400, message=message.format(month=month,
                                                                                  current=this_month(now)))
            return
        rows = await self.service.figures.facility.month_report(month)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="aifl-gpu-hours-{month}.csv"')
        self.finish(report_csv(rows))


class MetricsHandler(FacilityHandler):
    """``GET /metrics``: Prometheus text (admins, and hub services with access to this service)."""

    async def get(self) -> None:
        """The gauges of :func:`~aifl_hub.facility.prometheus_text`."""
        self.user_model(admin=True, services=True)
        figures, _ = await self.service.figures.current()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(prometheus_text(figures))


def make_app(service: Service, cookie_secret: bytes) -> web.Application:
    """The tornado application with every route under ``service.prefix``."""
    prefix = service.prefix
    routes: list[tuple[str, type[web.RequestHandler], dict[str, Any]]] = [
        (prefix, PageHandler, {"service": service}),
        (prefix + "language", LanguageHandler, {"service": service}),
        (prefix + "api/organisation", OrganisationHandler, {"service": service}),
        (prefix + "api/figures", FiguresHandler, {"service": service}),
        (prefix + "report.csv", ReportHandler, {"service": service}),
        (prefix + "metrics", MetricsHandler, {"service": service}),
    ]
    callback: tuple[str, type[web.RequestHandler], dict[str, Any]] = (
        prefix + "oauth_callback", HubOAuthCallbackHandler, {})
    return web.Application([*routes, callback], cookie_secret=cookie_secret, xsrf_cookies=True,
                           hub_auth=service.hub_auth)


def main(argv: list[str] | None = None) -> None:
    """Run the service where the hub says (``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``)."""
    parser = argparse.ArgumentParser(description="The AI Factory Lab facility page (a JupyterHub service).")
    parser.add_argument("--site-file", required=True, help="the site file (hub_config/site.yaml)")
    parser.add_argument("--cache-seconds", type=float, default=30, help="how long figures are reused")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s facility] %(message)s")
    site = load_site(args.site_file)
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/facility/")
    service = Service(site, FacilityCache(Facility(site), ttl=args.cache_seconds), HubOAuth.instance(cache_max_age=60),
                      prefix, os.environ.get("JUPYTERHUB_BASE_URL", "/"), EnergyReport(site, ttl=args.cache_seconds))
    app = make_app(service, os.urandom(32))
    app.listen(url.port or 80, url.hostname or "127.0.0.1", xheaders=True)
    log.info("facility page at %s%s", url.geturl().rstrip("/"), prefix)
    with contextlib.suppress(KeyboardInterrupt):  # the hub stops its services with SIGINT
        ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
