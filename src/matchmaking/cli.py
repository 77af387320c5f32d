"""The one command-line interface. Every MLproject entry point and DAG task calls into it."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from pydantic import ValidationError

from matchmaking.config import Settings
from matchmaking.errors import ConfigError, InputError, MatchmakingError, cli_lines, field_problems
from matchmaking.progress import PROGRESS_ENV_VAR, command_progress, export_choice, progress_wanted
from matchmaking.registry.commands import promote_command, rollback_command, scope_command
from matchmaking.world.dispatch import DEFAULT_TEMPERATURE_MIN

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="matchmaking",
    help="Ride-hailing driver matchmaking: synthetic world, MLflow pipeline, scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("promote")(promote_command)
app.command("rollback")(rollback_command)
app.command("scope")(scope_command)
world_app = typer.Typer(
    help="The synthetic ride-hailing world (stands in for production data).", no_args_is_help=True
)
app.add_typer(world_app, name="world")
experiment_app = typer.Typer(
    help="Online experiments: what each arm of live traffic did (docs/experiments.md).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        envvar=PROGRESS_ENV_VAR,
        show_default=False,
        help="Show progress on stderr (default: only when stderr is a terminal).",
    ),
]
#: Options that ``train`` and ``train-country`` share.
TrainParamsOption = Annotated[
    Path | None, typer.Option(help="Training parameters YAML (default: built-in).")
]
TrainSetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a parameter: KEY=VALUE (repeatable)."),
]
ReuseOption = Annotated[
    bool, typer.Option(help="Reuse a version trained on the same data, code and params.")
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # urllib3 logs every retry against an unreachable tracking server; the CLI reports the
    # outage once, as an error line (see tracking.tracking_error).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _cities(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


@world_app.command("generate")
def world_generate(
    cities: Annotated[
        str, typer.Option(help="Comma-separated city ids (see `matchmaking world cities`).")
    ] = "jakarta",
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (local calendar).")] = (
        "2026-10-01"
    ),
    days: Annotated[int, typer.Option(min=1, max=3660, help="Number of days.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 42,
    out: Annotated[
        str | None,
        typer.Option(
            help="Lake: a directory or a URI such as s3://bucket/lake (default: "
            "$MATCHMAKING_LAKE_URI, else $MATCHMAKING_DATA_DIR/lake)."
        ),
    ] = None,
    scale: Annotated[
        float,
        typer.Option(min=0.0, help="Share of each city's real daily volume to simulate."),
    ] = 0.002,
    bookings_per_day: Annotated[
        int | None, typer.Option(min=1, help="Override: bookings per city-day (ignores --scale).")
    ] = None,
    dispatch_temperature: Annotated[
        float,
        typer.Option(
            help="The historical dispatcher's softmax temperature, minutes of logged ETA "
            "(>= 0.1): candidates are offered in a random order drawn with weights "
            "exp(-ETA / temperature), logged with their propensities; lower is closer to "
            "nearest-ETA, higher explores more (docs/data.md)."
        ),
    ] = DEFAULT_TEMPERATURE_MIN,
    progress: ProgressOption = None,
) -> None:
    """Generate drivers, bookings, candidates, dispatch logs and the hidden ground truth."""
    from matchmaking.world.generate import generate_world

    settings = Settings()
    summary = generate_world(
        cities=_cities(cities),
        start=_date(start, "--start"),
        days=days,
        seed=seed,
        out=out or settings.lake_dir,
        scale=scale,
        bookings_per_day=bookings_per_day,
        progress=progress_wanted(progress),
        dispatch_temperature=dispatch_temperature,
    )
    typer.echo(summary.to_table())


@world_app.command("dispatch")
def world_dispatch(
    city: Annotated[str, typer.Option(help="City id.")],
    date_: Annotated[str, typer.Option("--date", help="The local calendar day, YYYY-MM-DD.")],
    url: Annotated[str, typer.Option(help="The scoring service, e.g. http://127.0.0.1:8000.")],
    token: Annotated[
        str | None,
        typer.Option(envvar="MATCHMAKING_SERVE_AUTH_TOKEN", help="The service's bearer token."),
    ] = None,
    seed: Annotated[int, typer.Option(help="The seed `world generate` used for this lake.")] = 42,
    scale: Annotated[
        float, typer.Option(min=0.0, help="The --scale `world generate` used (the roster).")
    ] = 0.002,
    bookings_per_day: Annotated[
        int | None,
        typer.Option(min=1, help="The --bookings-per-day `world generate` used (overrides scale)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Rank calls in flight at most.")] = 4,
    replace: Annotated[
        bool, typer.Option(help="Serve and rewrite a day the lake already holds.")
    ] = False,
    out: Annotated[
        str | None,
        typer.Option(help="Lake (default: $MATCHMAKING_LAKE_URI, else <data dir>/lake)."),
    ] = None,
) -> None:
    """Play dispatch for one simulated city-day against a live scoring service: rank each
    booking with POST /v1/rank, offer in the answered order (at most 3), draw the drivers'
    answers from the world's truth, post them to POST /v1/outcomes, and write the day's raw
    partitions with the service's propensities (docs/experiments.md)."""
    from matchmaking.world.served import DispatchRequest, dispatch_day

    summary = dispatch_day(
        DispatchRequest(
            city=city,
            day=_date(date_, "--date"),
            url=url,
            out=out or Settings().lake_dir,
            token=token,
            seed=seed,
            scale=scale,
            bookings_per_day=bookings_per_day,
            workers=workers,
            replace=replace,
        )
    )
    typer.echo(summary.to_text())


@world_app.command("cities")
def world_cities(
    country: Annotated[str | None, typer.Option(help="Filter by ISO country code.")] = None,
) -> None:
    """List the market catalogue (the built-in one plus MATCHMAKING_MARKETS files)."""
    from matchmaking.markets import MARKETS_ENV, catalogue

    markets = catalogue()
    shown = [c for c in markets.markets.values() if country is None or c.country == country.upper()]
    if not shown:
        known = ", ".join(sorted({c.country for c in markets.markets.values()}))
        raise InputError(
            f"no market in country {country!r}; the catalogue has markets in {known}. Add one "
            f"with a markets file named by {MARKETS_ENV} (see docs/markets.md)"
        )
    for c in shown:
        typer.echo(f"{c.id:<24} {c.country}  {c.name:<24} {c.tz:<20} size={c.size or '-'}")


def _date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{option} {value!r} is not a date; use YYYY-MM-DD, for example 2026-10-01"
        ) from None


@app.command()
def process(
    city: Annotated[str, typer.Option(help="City id.")],
    start: Annotated[str, typer.Option(help="First day of the window, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day of the window, YYYY-MM-DD (inclusive).")],
    max_bad_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fail when more raw rows than this are bad.")
    ] = 0.05,
    progress: ProgressOption = None,
) -> None:
    """Validate raw partitions, quarantine bad rows, publish a versioned feature dataset.

    The window is processed one day at a time (see `process-day`); days already published
    with the same inputs are reused, and the dataset lists its days.
    """
    from matchmaking.markets import get_market
    from matchmaking.processing.step import process as run_process

    get_market(city)
    shown = command_progress(progress, f"process {city}")
    result = run_process(
        Settings(), city, _date(start, "--start"), _date(end, "--end"), max_bad_share, shown
    )
    typer.echo(
        f"features: {result.dataset_dir}\ndigest: {result.digest}\nrows: {result.rows} "
        f"(offered {result.offered_rows}), quarantined: {result.quarantined} "
        f"{result.quarantine_counts or ''}\nrun_id: {result.run_id}"
    )


@app.command("process-day")
def process_day(
    city: Annotated[str, typer.Option(help="City id.")],
    day: Annotated[str, typer.Option(help="The local calendar day, YYYY-MM-DD.")],
    max_bad_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fail when more raw rows than this are bad.")
    ] = 0.05,
    force: Annotated[
        bool, typer.Option(help="Rebuild even when published (writes the same bytes).")
    ] = False,
) -> None:
    """Process one city-day: validate its raw partitions and publish its feature partition.

    History comes from the per-driver summaries of the 28 days before it (made from their raw
    days when missing). A day published with the same raw data, code and history is reused.
    `process --start --end` runs this for each day of the window and lists the days.
    """
    from matchmaking.markets import get_market
    from matchmaking.processing.step import process_day as run_day

    get_market(city)
    result = run_day(Settings(), city, _date(day, "--day"), max_bad_share, force)
    typer.echo(
        f"day: {result.location}\ndigest: {result.digest}\nrows: {result.manifest['rows']} "
        f"(offered {result.manifest['offered_rows']}){' [reused]' if result.reused else ''}"
    )


@app.command()
def train(
    city: Annotated[str, typer.Option(help="City id.")],
    features: Annotated[
        str,
        typer.Option(help="Feature dataset printed by `process`: a dir, file:// or s3:// URI."),
    ],
    params: TrainParamsOption = None,
    set_: TrainSetOption = None,
    process_run_id: Annotated[str | None, typer.Option(help="Lineage: the process run.")] = None,
    reuse_existing: ReuseOption = True,
    progress: ProgressOption = None,
) -> None:
    """Fit binary and LambdaRank LightGBM models, keep the better, register a version."""
    from matchmaking.training.params import load_params, parse_overrides
    from matchmaking.training.train import train as run_train

    p = load_params(params, parse_overrides(set_ or []))
    shown = command_progress(progress, f"train {city}")
    result = run_train(Settings(), city, features, p, process_run_id or None, reuse_existing, shown)
    typer.echo(
        f"model: {result.model_name} v{result.version} ({result.objective})"
        f"{' [reused]' if result.reused else ''}\nrun_id: {result.run_id}\n"
        f"model_uri: {result.model_uri}"
    )


@app.command("train-country")
def train_country(
    country: Annotated[str, typer.Option(help="ISO 3166 alpha-2 code of the country, e.g. ID.")],
    features: Annotated[
        list[str] | None,
        typer.Option(
            help="A city's feature dataset, CITY=DIR-or-URI (repeatable, or a comma list). "
            "Default: the newest "
            "published dataset of each of the country's cities (of --start..--end when given)."
        ),
    ] = None,
    start: Annotated[str | None, typer.Option(help="Window start of the default datasets.")] = None,
    end: Annotated[str | None, typer.Option(help="Window end of the default datasets.")] = None,
    params: TrainParamsOption = None,
    set_: TrainSetOption = None,
    reuse_existing: ReuseOption = True,
    progress: ProgressOption = None,
) -> None:
    """Fit one model pooled over the country's cities (city context as features) and register
    it as <prefix>-country-<cc> (docs/pooled.md)."""
    from matchmaking.training.params import load_params, parse_overrides
    from matchmaking.training.pooled import country_datasets
    from matchmaking.training.pooled import train_country as run_train_country

    p = load_params(params, parse_overrides(set_ or []))
    settings = Settings()
    given: dict[str, str] = {}
    for item in (part for value in features or [] for part in value.split(",") if part):
        city, sep, where = item.partition("=")
        if not sep or not city or not where:
            raise InputError(f"--features {item!r} is not CITY=DIR (e.g. medan=/lake/features/...)")
        given[city.strip()] = where.strip()
    datasets = dict(given) if given else country_datasets(settings, country, start, end)
    shown = command_progress(progress, f"train-country {country.upper()}")
    result = run_train_country(settings, country, datasets, p, reuse_existing, shown)  # type: ignore[arg-type]
    typer.echo(
        f"model: {result.model_name} v{result.version} ({result.objective})"
        f"{' [reused]' if result.reused else ''}\npooled: {', '.join(sorted(datasets))}\n"
        f"run_id: {result.run_id}\nmodel_uri: {result.model_uri}"
    )


@app.command()
def evaluate(
    city: Annotated[str, typer.Option(help="City id.")],
    model_uri: Annotated[
        str,
        typer.Option(
            help="models:/matchmaking-<city>/<version>, models:/<name>@<alias> or runs:/...; "
            "a model of --city (its city tag)."
        ),
    ],
    features: Annotated[
        str, typer.Option(help="Holdout feature dataset (a later window): a dir or a URI.")
    ],
    seed: Annotated[
        int, typer.Option(help="Seed of the replay's draws and of a ranker's calibration folds.")
    ] = 7,
    progress: ProgressOption = None,
) -> None:
    """Logged-data metrics and off-policy estimates for the model and two baselines; the oracle
    and a dispatch replay too where the lake has the simulator's truth/."""
    from matchmaking.evaluation.evaluate import artifact_lines, format_summary
    from matchmaking.evaluation.evaluate import evaluate as run_evaluate

    shown = command_progress(progress, f"evaluate {city}")
    result = run_evaluate(Settings(), city, model_uri, features, seed, progress=shown)
    typer.echo(format_summary([result]))
    typer.echo(f"run_id: {result.run_id}")
    for line in artifact_lines(result):
        typer.echo(line)


@app.command()
def pipeline(
    city: Annotated[str, typer.Option(help="City id.")],
    end: Annotated[str, typer.Option(help="Last day of data (the holdout ends here).")],
    train_days: Annotated[int, typer.Option(min=2, help="Days in the training window.")] = 28,
    holdout_days: Annotated[int, typer.Option(min=1, help="Days in the later holdout.")] = 7,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training parameter: KEY=VALUE (repeatable)."),
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Chain process -> train -> evaluate as MLflow Projects runs (the `main` entry point)."""
    from matchmaking.markets import get_market
    from matchmaking.pipeline import run_chain
    from matchmaking.training.params import load_params, parse_overrides

    get_market(city)
    load_params(None, parse_overrides(set_ or []))  # refuse a bad --set before any step runs
    export_choice(progress)  # the steps run as processes of their own
    overrides = {}
    for item in set_ or []:
        key, _, value = item.partition("=")
        if value.strip() not in ("", "''", '""'):
            overrides[key] = value
    out = run_chain(Settings(), city, _date(end, "--end"), train_days, holdout_days, overrides)
    for key, value in out.items():
        typer.echo(f"{key}: {value}")


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to bind (default: $MATCHMAKING_SERVE_HOST, else 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default: $MATCHMAKING_SERVE_PORT, else 8000)."),
    ] = None,
) -> None:
    """Serve each city's Production model over HTTP (POST /v1/rank, /v1/match, /v1/outcomes).

    Every other setting comes from MATCHMAKING_SERVE_* (docs/serving.md); with
    MATCHMAKING_SERVE_LAKE_URI (or MATCHMAKING_LAKE_URI) set, answers and outcomes are logged
    to <lake>/serving/.
    """
    from serving.main import run

    run(host=host, port=port)


@app.command()
def report(
    cities: Annotated[
        str | None, typer.Option(help="Comma-separated city ids (default: every city found).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="First data day shown, YYYY-MM-DD (default: all).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for index.html (default: <data dir>/report).")
    ] = None,
    drift_config: Annotated[
        Path | None, typer.Option(help="Drift YAML (default: the packaged drift.yaml).")
    ] = None,
) -> None:
    """Static HTML report of the fleet (performance, Production history, data health, drift),
    logged to MLflow as the artifact of a `report` run."""
    from matchmaking.markets import get_market
    from matchmaking.reporting.drift import load_drift_config
    from matchmaking.reporting.report import build_report

    chosen = _cities(cities) if cities else None
    for city in chosen or []:
        get_market(city)
    result = build_report(
        Settings(),
        chosen,
        _date(since, "--since") if since else None,
        out,
        load_drift_config(drift_config),
    )
    looks = sum(1 for c in result.report.cities if c.attention)
    typer.echo(
        f"report: {result.path}\ncities: {len(result.report.cities)} ({looks} need a look)\n"
        f"run_id: {result.run_id}\nartifact: {result.artifact_uri}"
    )


@experiment_app.command("report")
def experiment_report(
    city: Annotated[str, typer.Option(help="City id.")],
    since: Annotated[
        str | None, typer.Option(help="First day of decisions, YYYY-MM-DD (UTC; default: all).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Last day of decisions, YYYY-MM-DD (UTC; default: all).")
    ] = None,
    confidence: Annotated[
        float | None,
        typer.Option(
            min=0.5, max=0.999, help="Level of the intervals (default: gate.yaml's online one)."
        ),
    ] = None,
    gate_config: Annotated[
        Path | None,
        typer.Option(help="Gate YAML whose `online` section sets margin, confidence, sample."),
    ] = None,
) -> None:
    """Join the scoring service's decision log with dispatch's outcomes: bookings, offers,
    first-offer acceptance per arm and version, the difference challenger - champion with its
    interval, completion and pickup ETA; logged as an MLflow run with a plot."""
    from matchmaking.experiments.report import experiment_report as run_report
    from matchmaking.experiments.report import render
    from matchmaking.markets import get_market
    from matchmaking.registry.gate import load_thresholds

    get_market(city)
    online = load_thresholds(gate_config).online
    if confidence is not None:
        online = online.model_copy(update={"confidence": confidence})
    first = _date(since, "--since") if since else None
    last = _date(until, "--until") if until else None
    if first and last and last < first:
        raise InputError(f"--until {last} is before --since {first}")
    report = run_report(Settings(), city, first, last, online)
    typer.echo(render(report))
    typer.echo(f"run_id: {report.run_id}")


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=7, help="Days in the training window.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    progress: ProgressOption = None,
) -> None:
    """Run the main job end to end on the embedded defaults (SQLite, local files)."""
    from matchmaking.demo import run_demo

    export_choice(progress)  # the steps run as processes of their own
    run_demo(Settings(), days=days, seed=seed, progress=progress_wanted(progress))


class Terminated(KeyboardInterrupt):
    """Raised by the SIGTERM handler. A KeyboardInterrupt, so SIGTERM stops what Ctrl-C stops:
    no ``except Exception`` keeps the command going, every ``with mlflow.start_run()`` it
    unwinds marks its run FAILED, and ``mlflow.projects.run`` cancels the step it is running
    (SIGTERM to the step, which does the same)."""


#: Signals received, for the report: Typer turns a KeyboardInterrupt into exit 130 silently.
_received: list[str] = []


def _terminate(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    raise Terminated(name)


def run(args: list[str] | None = None) -> int:
    """Run one command; returns its exit code.

    Every failure of every command ends here and is printed the same way, as ``error: ...``
    lines on stderr with the documented exit code: usage errors of Typer/Click (2), the
    package's errors (their ``exit_code``), MLflow failures nobody handled (5) and SIGTERM
    (143, the run marked FAILED).
    """
    try:
        settings = Settings()
    except ValidationError as exc:  # a MATCHMAKING_ environment variable
        lines = [f"MATCHMAKING_{key.upper()}: {problem}" for key, problem in field_problems(exc)]
        return _report("\n".join(lines), ConfigError.exit_code)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _setup_logging(settings.log_level)
        os.environ.update(settings.mlflow_http_environment(os.environ))
        result = app(args=args, standalone_mode=False)
        if _received:  # Typer caught the Terminated and returned 130
            raise Terminated(_received[-1])
    except typer.TyperException as exc:  # Typer's (vendored Click's) usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the help text
            typer.echo(exc.format_message(), err=True)
            return exc.exit_code
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return _report(f"{exc.format_message()}{where}", exc.exit_code)
    except typer.Abort:
        return _report("aborted", 1)
    except MatchmakingError as exc:
        return _report(str(exc), exc.exit_code)
    except Exception as exc:
        error = _tracking_failure(exc, settings)
        if error is None:
            raise  # a bug: keep the traceback
        return _report(str(error), error.exit_code)
    except Terminated as exc:
        return _report(
            f"stopped by {exc}; an MLflow run it had open is marked FAILED",
            128 + signal.SIGTERM,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else 0


def _tracking_failure(exc: Exception, settings: Settings) -> MatchmakingError | None:
    """The package error for an MLflow failure nothing handled (``None`` for anything else)."""
    mlflow = sys.modules.get("mlflow")  # not imported: the failure cannot be MLflow's
    if mlflow is None:
        return None
    if isinstance(exc, mlflow.exceptions.ExecutionException):  # an MLflow Projects step
        return MatchmakingError(f"{exc}; the step's own error is printed above")
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    from matchmaking import tracking

    return tracking.tracking_error(exc, settings)


def _report(message: str, code: int) -> int:
    typer.echo(cli_lines(message), err=True)
    return code


def main() -> None:
    """Console-script entry: configure logging once, map every failure to its exit code."""
    sys.exit(run())


if __name__ == "__main__":
    main()
