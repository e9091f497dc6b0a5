"""The `catalog` command line: parse, call the library, render. No analysis happens here."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import CatalogError

app = typer.Typer(help="A database-backed catalog of medical image segmentation datasets "
                       "(nnU-Net v1 crop + DatasetAnalyzer facts as SQL rows).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
export_app = typer.Typer(help="Write a task in another tool's format.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(export_app, name="export")

DbOption = Annotated[Optional[str], typer.Option(
    "--db", help="Database URL (default: $CATALOG_DB, else sqlite:///catalog.db here).",
    show_default=False)]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


def _handles_errors(command):
    """Every CatalogError becomes `Error: message` on stderr and exit code 1, never a traceback."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return command(*args, **kwargs)
        except CatalogError as exc:
            _fail(str(exc))
        except SQLAlchemyError as exc:
            from .db import describe_db_error

            _fail(f"database error: {describe_db_error(exc)}")

    return wrapper


def _fail(message: str, code: int = 1):
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _engine(db: str | None, **kwargs):
    from .db import make_engine

    return make_engine(db, **kwargs)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _ProgressLine:
    """One self-rewriting stderr line: cases done, rate, ETA, failures so far."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        if not self.tty and p.done != p.total and now - self.last < 5:
            return  # keep logs short when not on a terminal
        self.last = now
        line = (f"{self.label} [{p.done}/{p.total}] {p.rate:.2f} cases/s, ETA {_eta(p.eta_seconds)}, "
                f"failed {p.failed}" + (f" ({p.last_case})" if p.last_case else ""))
        typer.echo(("\r" + line.ljust(100)) if self.tty else line, err=True, nl=not self.tty)

    def close(self) -> None:
        if self.tty:
            typer.echo("", err=True)


@app.command()
@_handles_errors
def ingest(
    task: Annotated[str, typer.Argument(help="Task folder, or a task name/number under "
                                             "$nnUNet_raw_data_base/nnUNet_raw_data.")],
    db: DbOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", help="Worker processes "
                                                   "(default: the number of cores).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-analyse every case, changed or not.")] = False,
    update_root: Annotated[bool, typer.Option("--update-root", help="Store this folder as the task's "
                                              "path (the first ingest's path is kept otherwise).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    max_image_gb: Annotated[float, typer.Option("--max-image-gb", help="Refuse images whose voxels "
                                                "would need more memory than this.")] = 8.0,
    lease: Annotated[float, typer.Option("--lease", help="Seconds a claimed case stays reserved "
                                         "without renewal (distributed ingest).")] = 120.0,
):
    """Analyse every case of a task once and store the results (only changed cases on re-runs).

    Example: catalog ingest ./Task004_Hippocampus --db sqlite:///catalog.db
    """
    from .ingest import ingest_task
    from .layout import resolve_task_dir

    task_dir = resolve_task_dir(task)
    engine = _engine(db)
    bar = _ProgressLine(task_dir.name)
    try:
        summary = ingest_task(engine, task_dir, workers=workers, force=force, update_root=update_root,
                              max_image_bytes=int(max_image_gb * 1024**3), lease_seconds=lease, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        _fail("interrupted: every case finished so far is stored; run the same command again to continue", 130)
    bar.close()
    typer.echo(render_ingest_summary(summary))
    if summary.errors or (strict and summary.warnings):
        raise typer.Exit(1)


def render_ingest_summary(s) -> str:
    lines = [f"{s.task}: {s.cases_listed} cases listed; {s.new} new, {s.changed} changed, "
             f"{s.unchanged} unchanged, {s.failed} failed, {s.removed} removed"
             + (f", {s.elsewhere} done by other workers" if s.elsewhere else "")
             + f" in {s.seconds:.1f} s (run {s.run_id})"]
    if s.case_seconds:
        import statistics

        lines.append(f"per analysed case: {statistics.median(s.case_seconds):.3f} s median "
                     f"(reading files {statistics.median(s.read_seconds):.3f} s)")
    counts = s.findings_by_check
    if counts:
        from .checks import CHECKS

        lines.append("findings: " + ", ".join(f"{check} ({CHECKS[check][0]}) x{n}" for check, n in sorted(counts.items())))
        lines.append(f"see them with: catalog findings {s.task}")
    return "\n".join(lines)


@app.command()
@_handles_errors
def check(
    task: Annotated[str, typer.Argument(help="Task folder, name or number.")],
    workers: Annotated[Optional[int], typer.Option("--workers", "-j")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    fmt: FormatOption = "table",
    max_image_gb: Annotated[float, typer.Option("--max-image-gb")] = 8.0,
):
    """Run every data check on a task without storing anything.

    Example: catalog check ./Task004_Hippocampus
    """
    from .checkrun import check_task
    from .layout import resolve_task_dir

    findings = check_task(resolve_task_dir(task), workers=workers, max_image_bytes=int(max_image_gb * 1024**3))
    if fmt == "json":
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        typer.echo(render_findings([f.as_dict() for f in findings]) if findings else "no findings")
    severities = {f.severity for f in findings}
    if "error" in severities or (strict and "warning" in severities):
        raise typer.Exit(1)


def render_findings(rows: list[dict]) -> str:
    return "\n".join(f"{r['severity']:<7} {r['check']:<24} {r.get('case') or '-':<16} {r['message']}" for r in rows)


@app.command()
@_handles_errors
def findings(
    task: Annotated[str, typer.Argument(help="Task name (or folder/number).")],
    db: DbOption = None,
    fmt: FormatOption = "table",
):
    """List the problems the checks found in a task's files.

    Example: catalog findings Task004_Hippocampus --format json
    """
    from .browse import list_findings
    from .properties import task_name_for

    engine = _engine(db)
    rows = list_findings(engine, task_name_for(engine, task))
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(render_findings(rows) if rows else "no findings")


@export_app.command("nnunet-v1")
@_handles_errors
def export_nnunet_v1(
    task: Annotated[str, typer.Argument(help="Task name (or folder/number).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write (default: "
                                                "$nnUNet_raw_data_base/nnUNet_cropped_data/TASK).")] = None,
    db: DbOption = None,
    intensity: Annotated[str, typer.Option("--intensity", help="always: intensity properties for every "
                                           "task; ct-only: nnUNet_plan_and_preprocess's rule (None unless a "
                                           "modality is CT).")] = "always",
    skip_failed: Annotated[bool, typer.Option("--skip-failed", help="Export the cases without errors, "
                                              "leave the others out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an --out folder that catalog "
                                            "did not write.")] = False,
    raw_root: Annotated[Optional[Path], typer.Option("--raw-root", help="Read the raw task from here "
                                                     "instead of the path stored at ingest.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j")] = None,
):
    """Write nnU-Net v1's cropped folder (npz, pkl, dataset_properties.pkl, ...) for a task.

    Example: catalog export nnunet-v1 Task004_Hippocampus --out ./cropped/Task004_Hippocampus
    """
    from .export.nnunet_v1 import export_nnunet_v1 as run_export
    from .properties import task_name_for

    engine = _engine(db)
    name = task_name_for(engine, task)

    def progress(done, total):
        typer.echo(f"\r{name}: npz {done}/{total}", err=True, nl=done == total)

    summary = run_export(engine, name, str(out) if out else None, intensity=intensity, skip_failed=skip_failed,
                         overwrite=overwrite, raw_root=str(raw_root) if raw_root else None, workers=workers,
                         progress=progress)
    typer.echo(f"{summary.task}: exported {len(summary.cases)} cases to {summary.out_dir} in {summary.seconds:.1f} s"
               + ("" if summary.intensity else " (intensityproperties None: no CT modality, --intensity ct-only)"))
    for identifier, why in summary.skipped.items():
        typer.echo(f"skipped {identifier}: {why}")


def render_table(columns: list[str], rows: list[tuple]) -> str:
    """Plain aligned text table (floats with up to 6 significant digits)."""
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in body]
    return "\n".join(lines)


def _emit(columns: list[str], rows: list[tuple], fmt: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str))
    elif fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        typer.echo(buffer.getvalue(), nl=False)
    elif fmt == "table":
        typer.echo(render_table(columns, rows))
    else:
        _fail(f"unknown --format {fmt!r}: use table, csv or json", 2)


@app.command()
@_handles_errors
def query(
    sql: Annotated[str, typer.Argument(help="One SQL statement (read-only).")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
):
    """Run a read-only SQL query over the catalog's tables and views.

    Example: catalog query "SELECT task, cases, anisotropy FROM task_summary ORDER BY anisotropy DESC"
    """
    from .query import run_query

    columns, rows = run_query(sql, db)
    _emit(columns, rows, fmt)


@app.command()
@_handles_errors
def tasks(db: DbOption = None, fmt: FormatOption = "table"):
    """List the tasks in the catalog.

    Example: catalog tasks --format json
    """
    from .browse import list_tasks

    rows = list_tasks(_engine(db))
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    _emit(["task", "cases", "failed", "channels", "classes"],
          [(r["task"], r["cases"], r["failed"], ",".join(r["channels"]), ",".join(r["classes"].values()))
           for r in rows], fmt)


@app.command()
@_handles_errors
def cases(task: Annotated[str, typer.Argument(help="Task name (or folder/number).")],
          db: DbOption = None, fmt: FormatOption = "table"):
    """List a task's cases with status, spacing and shapes.

    Example: catalog cases Task004_Hippocampus
    """
    from .browse import list_cases
    from .properties import task_name_for

    engine = _engine(db)
    rows = list_cases(engine, task_name_for(engine, task))
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
        return

    def triple(v):
        return "" if v is None else " x ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)

    _emit(["case", "status", "spacing (z,y,x)", "size (z,y,x)", "cropped (z,y,x)", "classes"],
          [(r["case"], r["status"], triple(r["spacing_zyx"]), triple(r["original_size_zyx"]),
            triple(r["cropped_size_zyx"]), ",".join(map(str, r["classes_present"]))) for r in rows], fmt)


@app.command()
@_handles_errors
def show(task: Annotated[str, typer.Argument(help="Task name (or folder/number).")],
         db: DbOption = None, fmt: FormatOption = "table"):
    """Show a task's dataset properties (nnU-Net v1's, readable) and class statistics.

    Example: catalog show Task004_Hippocampus
    """
    from .browse import show_task
    from .properties import task_name_for

    engine = _engine(db)
    info = show_task(engine, task_name_for(engine, task))
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{info['task']}: {info['cases']} cases"
               + (f" ({len(info['excluded_cases'])} excluded: {', '.join(info['excluded_cases'])})"
                  if info["excluded_cases"] else ""))
    typer.echo("modalities: " + ", ".join(f"{k}={v}" for k, v in info["modalities"].items()))
    typer.echo("classes: " + ", ".join(f"{k}={info['class_names'][str(k)]}" for k in info["all_classes"]))
    if info["median_spacing_zyx"]:
        typer.echo("median spacing (z,y,x): " + " x ".join(f"{v:.4g}" for v in info["median_spacing_zyx"])
                   + " mm; median size after crop: " + " x ".join(f"{v:g}" for v in info["median_size_after_crop_zyx"])
                   + f"; median size reduction {info['median_size_reduction']:.3f}")
    typer.echo("")
    keys = ["median", "mean", "sd", "mn", "mx", "percentile_00_5", "percentile_99_5"]
    _emit(["channel"] + keys, [(k, *[v[x] for x in keys]) for k, v in info["intensity"].items()], "table")
    typer.echo("")
    _emit(["class", "cases", "present", "voxels", "volume_mm3", "regions", "one_piece"],
          [(c["class_value"], c["cases"], c["cases_present"], c["voxels"], c["volume_mm3"], c["regions"],
            c["cases_one_piece"]) for c in info["classes"]], "table")


@app.command()
@_handles_errors
def status(task: Annotated[str, typer.Argument(help="Task name (or folder/number).")],
           db: DbOption = None,
           export_dir: Annotated[Optional[Path], typer.Option("--export", help="An export folder to check "
                                                              "against the catalog.")] = None,
           fmt: FormatOption = "table"):
    """Per case: ok, changed on disk, failed, stale, removed or pending; is an export current?

    Example: catalog status Task004_Hippocampus --export ./cropped/Task004_Hippocampus
    """
    from .browse import task_status
    from .properties import task_name_for

    engine = _engine(db)
    info = task_status(engine, task_name_for(engine, task), str(export_dir) if export_dir else None)
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2))
        return
    _emit(["case", "status"], [(r["case"], r["status"]) for r in info["cases"]], "table")
    if "export" in info:
        e = info["export"]
        typer.echo(f"export {e['path']}: " + ("current" if e["current"] else f"NOT current ({e['why']})"))


@db_app.command("upgrade")
@_handles_errors
def db_upgrade(db: DbOption = None):
    """Create the catalog's tables or upgrade them to this version's schema.

    Example: catalog db upgrade --db postgresql+psycopg://user@host/catalog
    """
    from .db import make_engine, redact, resolve_url, upgrade_schema

    engine = make_engine(db, upgrade=False)
    before, after = upgrade_schema(engine)
    where = redact(resolve_url(db))
    typer.echo(f"{where}: schema already at {after}" if before == after else f"{where}: schema {before or 'empty'} -> {after}")


@app.command()
@_handles_errors
def demo(
    folder: Annotated[Path, typer.Option("--folder", help="Where to write the demo tasks.")] = Path("catalog-demo"),
    db: DbOption = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j")] = None,
):
    """Generate two small synthetic tasks, ingest them, show and export them.

    Example: catalog demo
    """
    from .demo import run_demo

    for line in run_demo(folder, db, workers=workers, progress_factory=_ProgressLine):
        typer.echo(line)


def main() -> None:
    try:
        app()
    except CatalogError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
