"""
L{build_config}: option values in, a L{BalancerConfig} out.

It checks each raw value's type, runs each option's parser
(L{balancebeam.config_options.OPTIONS}), fills in defaults, and then checks
what no single value shows: the options that must fit together (upstreams
and their weights, listeners, the pool's caps, the firewall, the admin
listener, TLS, worker processes). The first problem is raised as a
L{ConfigError} naming its option. Callers import L{build_config} from
L{balancebeam.config}.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from balancebeam.config_addresses import UpstreamSpec, is_loopback_host, parse_host_port
from balancebeam.config_options import FLAG, LIST, OPTIONS, ConfigError, Option, _default
from balancebeam.config_records import (
    BalancerConfig,
    CacheConfig,
    Limits,
    Timeouts,
    TlsConfig,
    WafConfig,
)
from balancebeam.config_values import default_health_check_timeout


def _raw_value(option: Option, value: object) -> Any:
    """
    Check the type of a raw value given for C{option}.

    @return: a C{str} for a L{VALUE} (numbers are turned into their text),
        a C{tuple} of C{str} for a L{LIST}, a C{bool} for a L{FLAG}.
    @raise ConfigError: when the value has the wrong type.
    """
    if option.kind == FLAG:
        if not isinstance(value, bool):
            raise ConfigError(option.name, "must be true or false", value)
        return value
    if option.kind == LIST:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(option.name, "must be a list of strings", value)
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(option.name, "must be a string", item)
        return tuple(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(option.name, "must be a string", value)
    return value


def _parse_one(option: Option, text: str) -> Any:
    """
    Run C{option}'s parser on one string.

    @raise ConfigError: naming the option and the value, when the parser
        refuses it.
    """
    assert option.parse is not None
    try:
        return option.parse(text)
    except ValueError as e:
        reason = str(e)
        if reason.startswith(repr(text)):
            reason = reason[len(repr(text)) :].lstrip(": ")
        raise ConfigError(option.name, reason, text) from None


def _unknown(name: str) -> ConfigError:
    """
    The error for a key that is not an option, suggesting a close one.
    """
    close = difflib.get_close_matches(name, list(OPTIONS), n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return ConfigError(name, f"is not an option{hint}")


def build_config(values: Mapping[str, object]) -> BalancerConfig:
    """
    Validate and normalise option values and build the configuration.

    @param values: option values by long name (L{OPTIONS}): a string for
        an option that takes one value (an C{int} or C{float} is taken as
        its text), a list of strings for a repeatable one, a C{bool} for a
        flag. A missing key takes the option's default.
    @return: the configuration. Without C{demo}, it has at least one
        upstream; with it, the configured upstreams may be none.
    @raise ConfigError: for an unknown key, or the first bad value, naming
        its option.
    """
    for name in values:
        if name not in OPTIONS:
            raise _unknown(name)
    raw: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for option in OPTIONS.values():
        value = _raw_value(option, values[option.name]) if option.name in values else None
        raw[option.name] = value
        if option.kind == FLAG:
            parsed[option.name] = bool(value)
        elif option.kind == LIST:
            parsed[option.name] = tuple(_parse_one(option, text) for text in value or ())
        elif value is not None:
            parsed[option.name] = _parse_one(option, value)
        else:
            parsed[option.name] = _default(option.name)

    records: dict[str, dict[str, Any]] = {
        record: {} for record in ("", "timeouts", "limits", "cache", "waf", "tls")
    }
    for option in OPTIONS.values():
        if option.field is not None:
            record, _, name = option.field.rpartition(".")
            records[record][name] = parsed[option.name]

    interval = parsed["active-health-check-interval"]
    if raw["health-check-timeout"] is None:
        health_check_timeout = default_health_check_timeout(interval)
    else:
        health_check_timeout = parsed["health-check-timeout"]
    _check_pool(raw, parsed)
    waf = WafConfig(**records["waf"])
    _check_waf(waf)
    _check_admin(raw)
    upstreams = _upstreams(raw, parsed)
    listen = _listen(raw, parsed)
    tls = TlsConfig(**records["tls"])
    _check_tls(raw, tls, listen, upstreams)
    _check_workers(raw, parsed, listen)
    return BalancerConfig(
        upstreams=upstreams,
        listen=listen,
        timeouts=Timeouts(**records["timeouts"]),
        limits=Limits(**records["limits"]),
        cache=CacheConfig(**records["cache"]),
        waf=waf,
        tls=tls,
        health_check_timeout=health_check_timeout,
        **records[""],
    )


# The options that must fit together.


def _upstreams(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> tuple[UpstreamSpec, ...]:
    """
    The upstreams, in order, with their C{upstream-weight}s.

    @raise ConfigError: on an upstream given twice, none without C{demo}, or
        a weight for an upstream that is not configured or weighted twice.
    """
    specs: dict[str, UpstreamSpec] = {}
    for text, spec in zip(raw["upstream"] or (), parsed["upstream"]):
        if spec.name in specs:
            raise ConfigError("upstream", f"{spec.name} is given twice", text)
        specs[spec.name] = spec
    if not specs and not parsed["demo"]:
        raise ConfigError(
            "upstream",
            "is required: give at least one HOST:PORT (e.g. --upstream 127.0.0.1:8081), "
            "or use --demo",
        )
    weighted: set[str] = set()
    for text, (name, tls, weight) in zip(
        raw["upstream-weight"] or (), parsed["upstream-weight"]
    ):
        if name not in specs:
            known = ", ".join(specs) or "none"
            raise ConfigError(
                "upstream-weight", f"{name} is not an --upstream (configured: {known})", text
            )
        if name in weighted:
            raise ConfigError("upstream-weight", f"{name} is weighted twice", text)
        spec = specs[name]
        if tls is not None and tls != spec.tls:
            given = "https" if spec.tls else "plain HTTP"
            raise ConfigError("upstream-weight", f"{name} is an --upstream over {given}", text)
        weighted.add(name)
        specs[name] = replace(spec, weight=weight)
    return tuple(specs.values())


def _listen(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> tuple[str, ...]:
    """
    The endpoint strings to listen on for plain HTTP: C{bind} (or its
    default) first, then every C{listen}; C{listen} or C{tls-bind} alone
    replaces the default C{bind} (an HTTPS-only balancer opens no plain port
    it was not asked for).

    @raise ConfigError: on an endpoint given twice.
    """
    endpoints: list[str] = []
    if raw["bind"] is not None or not (parsed["listen"] or parsed["tls-bind"]):
        endpoints.append(parsed["bind"])
    for text, endpoint in zip(raw["listen"] or (), parsed["listen"]):
        if endpoint in endpoints:
            raise ConfigError("listen", "this endpoint is given twice", text)
        endpoints.append(endpoint)
    return tuple(endpoints)


def _check_pool(raw: Mapping[str, Any], parsed: Mapping[str, Any]) -> None:
    """
    Check that C{pool-warm} fits under the pool's caps.

    @raise ConfigError: when it exceeds C{pool-max-idle-per-upstream}, or a
        non-zero C{pool-max-connections-per-upstream}.
    """
    warm = parsed["pool-warm"]
    text = raw["pool-warm"] if raw["pool-warm"] is not None else OPTIONS["pool-warm"].default
    for cap_name in ("pool-max-idle-per-upstream", "pool-max-connections-per-upstream"):
        cap = parsed[cap_name]
        if cap_name == "pool-max-connections-per-upstream" and cap == 0:
            continue
        if warm > cap:
            raise ConfigError("pool-warm", f"cannot exceed --{cap_name} ({cap})", text)


def _check_waf(waf: WafConfig) -> None:
    """
    With the firewall on, check that its engine is installed and that its
    rules can be found (the rules themselves load when the service is built).

    @raise ConfigError: naming C{--waf} (and what to install) or C{--waf-rules}.
    """
    if waf.mode == "off":
        return
    # Imported only when the firewall is on: it loads the engine's bindings.
    from balancebeam.waf.build import rule_files, unavailable_reason

    reason = unavailable_reason(waf.binding)
    if reason is not None:
        raise ConfigError("waf", reason.removeprefix("--waf "), waf.mode)
    try:
        rule_files(waf)
    except ValueError as error:
        if waf.rules:
            raise ConfigError("waf-rules", str(error), " ".join(waf.rules)) from None
        raise ConfigError("waf", str(error), waf.mode) from None


def _check_admin(raw: Mapping[str, Any]) -> None:
    """
    Check that an admin listener reachable from other machines has a token.

    @raise ConfigError: when C{admin-bind} is not a loopback address and no
        C{admin-token-file} is given, or a token file is given without it.
    """
    bind = raw["admin-bind"]
    if bind is None:
        if raw["admin-token-file"] is not None:
            raise ConfigError(
                "admin-token-file", "is given without --admin-bind", raw["admin-token-file"]
            )
        return
    host, _ = parse_host_port(bind)
    if not is_loopback_host(host) and raw["admin-token-file"] is None:
        raise ConfigError(
            "admin-bind",
            "is not a loopback address: give --admin-token-file too (the bearer "
            "token clients must send)",
            bind,
        )


# Not upstream-tls-verify: the command line always gives its default.
_UPSTREAM_TLS_OPTIONS = ("upstream-ca", "upstream-tls-name", "upstream-client-cert")


def _check_tls(
    raw: Mapping[str, Any],
    tls: TlsConfig,
    listen: tuple[str, ...],
    upstreams: tuple[UpstreamSpec, ...],
) -> None:
    """
    Check that the TLS options fit together: an HTTPS listener has a
    certificate and certificates have a listener, no address is given twice
    (as HTTPS, or as HTTPS and plain HTTP), and the upstream TLS files and
    name are given only with an C{https://} upstream. The files themselves are loaded
    when the service is built.

    @raise ConfigError: naming the option that does not fit.
    """
    for number, (text, endpoint) in enumerate(zip(raw["tls-bind"] or (), tls.listen)):
        if endpoint in tls.listen[:number]:
            raise ConfigError("tls-bind", "this address is given twice", text)
        if endpoint in listen:
            raise ConfigError("tls-bind", "is also a plain-HTTP listener (--bind)", text)
    has_certificates = bool(tls.certificates or tls.certificate_dirs)
    if tls.listen and not has_certificates:
        raise ConfigError(
            "tls-bind",
            "has no certificate: give --tls-cert FILE or --tls-cert-dir DIR",
            raw["tls-bind"][0],
        )
    if has_certificates and not tls.listen:
        name = "tls-cert" if tls.certificates else "tls-cert-dir"
        raise ConfigError(
            name, "is given without --tls-bind: no listener would serve it", raw[name][0]
        )
    if not any(spec.tls for spec in upstreams):
        for name in _UPSTREAM_TLS_OPTIONS:
            if raw[name] is not None:
                raise ConfigError(
                    name,
                    "applies to TLS upstreams, and no --upstream is https://HOST:PORT",
                    raw[name],
                )


def _check_workers(
    raw: Mapping[str, Any], parsed: Mapping[str, Any], listen: tuple[str, ...]
) -> None:
    """
    Refuse what several worker processes cannot do: count rate limits in
    each worker's memory (that would allow N times the limit), or share a
    unix socket (Twisted removes its path when a worker stops listening).

    @raise ConfigError: naming C{workers}, or the C{listen} endpoint.
    """
    workers = parsed["workers"]
    if workers <= 1:
        return
    text = raw["workers"] if raw["workers"] is not None else str(workers)
    if parsed["max-requests-per-minute"] > 0 and parsed["rate-limit-backend"] == "memory":
        raise ConfigError(
            "workers",
            f"cannot share the memory rate limiter: each of the {workers} workers would "
            f"allow --max-requests-per-minute on its own ({workers} times the limit); "
            "use --rate-limit-backend redis://HOST:PORT/DB, which every worker shares",
            text,
        )
    for endpoint in listen:
        kind, _, rest = endpoint.partition(":")
        if kind.lower() == "unix" or (
            kind.lower() == "systemd" and "domain=unix" in rest.lower()
        ):
            raise ConfigError(
                "listen",
                f"is a unix socket, which --workers {text} cannot share yet "
                "(a worker that stops would remove its path); listen on TCP, or run one "
                "process",
                endpoint,
            )
