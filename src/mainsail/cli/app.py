"""The ``mainsail`` command line. Each command parses options, builds settings, calls the library."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from mainsail._version import __version__
from mainsail.cli.endpoints import register

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mainsail: SageMaker-compatible model serving on your own machine.")
logger = logging.getLogger("mainsail.cli")


@app.command()
def serve(
    model: Annotated[str | None, typer.Argument(
        help="Model directory or model.tar.gz [env MAINSAIL_MODEL; default /opt/ml/model]")] = None,
    entry_point: Annotated[str | None, typer.Option(
        "--entry-point", help="Inference script [env SAGEMAKER_PROGRAM; default inference.py]")] = None,
    source_dir: Annotated[str | None, typer.Option(
        "--source-dir", help="Directory or sourcedir.tar.gz holding the script "
        "[env SAGEMAKER_SUBMIT_DIRECTORY; default <model>/code]")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port [env SAGEMAKER_BIND_TO_PORT; default 8080]")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes [env SAGEMAKER_MODEL_SERVER_WORKERS; default: cores]")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds per request before 504 [env SAGEMAKER_MODEL_SERVER_TIMEOUT; default 60]")] = None,
    max_payload_mb: Annotated[float | None, typer.Option(
        "--max-payload-mb", help="Largest request body [env SAGEMAKER_MAX_PAYLOAD_IN_MB; default 6]")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", help="debug/info/warning/error or 10..50 [env SAGEMAKER_CONTAINER_LOG_LEVEL]")] = None,
    default_accept: Annotated[str | None, typer.Option(
        "--default-accept",
        help="Type for a missing or */* Accept [env SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT]")] = None,
    framework: Annotated[str | None, typer.Option(
        help="Whose container defaults a script falls back to: auto, generic, sklearn, pytorch, "
        "xgboost [env MAINSAIL_FRAMEWORK; default auto: judged from the loaded model]")] = None,
    install_requirements: Annotated[bool | None, typer.Option(
        "--install-requirements/--no-install-requirements",
        help="pip-install code/requirements.txt (cached), or only report what is missing")] = None,
    reload: Annotated[bool, typer.Option(
        "--reload", help="Restart the workers when the script or model files change")] = False,
    preload: Annotated[bool | None, typer.Option(
        "--preload/--no-preload", help="Load the model once and fork the workers so they share its memory, "
        "where the handler is fork-safe [env MAINSAIL_PRELOAD; default on]")] = None,
    batching: Annotated[bool | None, typer.Option(
        "--batching/--no-batching", help="Adaptive batching: requests queued behind a busy model go to it "
        "together (built-in handlers; scripts with predict_batch_fn) [env MAINSAIL_BATCHING; default on]")] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        "--max-batch-size", help="Most requests per model call [env MAINSAIL_MAX_BATCH_SIZE; default 32]")] = None,
    max_batch_delay_ms: Annotated[float | None, typer.Option(
        "--max-batch-delay-ms", help="How long a batch formed under load may wait to fill up; a lone "
        "request never waits [env MAINSAIL_MAX_BATCH_DELAY_MS; default 0]")] = None,
    multi_model: Annotated[str | None, typer.Option(
        "--multi-model", metavar="MODELS_DIR", help="Serve the multi-model API (POST /models ...) "
        "[env SAGEMAKER_MULTI_MODEL=true; models dir default /opt/ml/models]")] = None,
    models_memory_mb: Annotated[float | None, typer.Option(
        "--models-memory-mb", help="Multi-model: memory budget of the loaded models, LRU-evicted "
        "[env MAINSAIL_MULTI_MODEL_MEMORY_MB; default half the RAM]")] = None,
) -> None:
    """Serve one model with the SageMaker container contract (/ping, /invocations)."""
    from pydantic import ValidationError

    from mainsail.errors import MainsailError
    from mainsail.log import configure_logging
    from mainsail.serve.server import run_server
    from mainsail.settings import ServeSettings

    given: dict[str, Any] = {
        "model_path": model, "entry_point": entry_point, "source_dir": source_dir, "host": host,
        "port": port, "workers": workers, "timeout": timeout, "max_payload_mb": max_payload_mb,
        "log_level": log_level, "default_accept": default_accept, "framework": framework,
        "install_requirements": install_requirements, "reload": reload or None, "preload": preload,
        "batching": batching, "max_batch_size": max_batch_size, "max_batch_delay_ms": max_batch_delay_ms,
    }
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    try:
        from mainsail.serve.multimodel import multi_model_from_env, serve_multi_model

        if multi_model is not None or multi_model_from_env():
            code = serve_multi_model(settings, multi_model or model, models_memory_mb, workers)
        else:
            code = run_server(settings)
    except MainsailError as exc:
        logger.error("%s", exc.message)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("export-onnx")
def export_onnx(
    model_dir: Annotated[str, typer.Argument(help="Reference (cursus bsm_pytorch) PyTorch model directory")],
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write the graph [default <MODEL_DIR>/model.onnx]")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (14 or later)")] = 14,
    atol: Annotated[float, typer.Option(
        help="Largest absolute difference of the probabilities allowed between ONNX Runtime and PyTorch")] = 1e-4,
) -> None:
    """Export the network to ONNX in the reference's layout, verified against PyTorch before it is written."""
    from mainsail.errors import MainsailError
    from mainsail.handlers.pytorch.export import export_onnx as export

    try:
        report = export(model_dir, output=output, opset=opset, atol=atol)
    except MainsailError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {report.path}")
    typer.echo(f"max abs diff {report.max_abs_diff:.3g} (atol {atol:g}), opset {report.opset}, "
               f"inputs {', '.join(report.inputs)}")


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the SageMaker API, the runtime API and /metrics")] = 8700,
    home: Annotated[str | None, typer.Option(
        help="State, models and logs [env MAINSAIL_HOME; default ~/.mainsail]")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run the control plane: the SageMaker hosting API and runtime API for boto3 and the SDK."""
    import uvicorn

    from mainsail.backends.local import LocalBackend, default_home
    from mainsail.gateway.app import create_control_app
    from mainsail.hosting.reconciler import Reconciler
    from mainsail.hosting.store import SQLiteStore
    from mainsail.log import configure_logging
    from mainsail.routing.router import Router

    configure_logging(log_level)
    root = Path(home).expanduser() if home else default_home()
    root.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(root / "state.db")
    router = Router(store)
    reconciler = Reconciler(store, LocalBackend(root), traffic=router)
    reconciler.start()
    from mainsail.jobs.transform.job import TransformRunner

    transforms = TransformRunner(store, reconciler.backend, root)
    transforms.start()
    logger.info("mainsail up: http://%s:%d (state in %s)", host, port, root)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place
    # that re-raise returns here, so the instances are stopped and the exit code is 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(create_control_app(store, router, home=root, s3_root=root / "s3"), host=host, port=port,
                    log_config=None, access_log=False)
    finally:
        # Instances do not outlive the control plane that owns them; the next `mainsail up` starts
        # them again (and adopts the ones a killed control plane left running).
        transforms.stop()
        reconciler.stop(stop_instances=True)
        store.close()


@app.command()
def doctor(
    model: Annotated[str, typer.Argument(help="Model directory or model.tar.gz to check")],
    entry_point: Annotated[str | None, typer.Option(
        "--entry-point", help="Inference script [env SAGEMAKER_PROGRAM; default inference.py]")] = None,
    source_dir: Annotated[str | None, typer.Option(
        "--source-dir", help="Directory or sourcedir.tar.gz holding the script "
        "[env SAGEMAKER_SUBMIT_DIRECTORY]")] = None,
    framework: Annotated[str | None, typer.Option(help="auto, generic, sklearn, pytorch, xgboost")] = None,
    sample: Annotated[str | None, typer.Option(help="A request body to send in a trial invocation")] = None,
    sample_content_type: Annotated[str | None, typer.Option(
        "--sample-content-type", help="Its Content-Type [default: from the file extension]")] = None,
    accept: Annotated[str | None, typer.Option(help="Accept header of the trial invocation")] = None,
    serverless: Annotated[bool, typer.Option("--serverless", help="Check serverless limits (4 MB request)")] = False,
    invoke: Annotated[bool, typer.Option("--invoke/--no-invoke", help="Load the model and send a sample")] = True,
    install_requirements: Annotated[bool, typer.Option(
        "--install-requirements", help="pip-install code/requirements.txt (cached, as serve does) first")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Check a model before deployment: archive, layout, script, requirements, artifacts, a trial invocation."""
    from mainsail import doctor as checks

    logging.disable(logging.CRITICAL)  # the findings say what the handlers would log
    try:
        findings = checks.diagnose(model, entry_point=entry_point, source_dir=source_dir, framework=framework,
                                   sample=sample, sample_content_type=sample_content_type, accept=accept,
                                   serverless=serverless, invoke=invoke, install_requirements=install_requirements)
    finally:
        logging.disable(logging.NOTSET)
    if as_json:
        typer.echo(checks.to_json(model, findings, strict=strict))
    else:
        from rich.console import Console

        checks.render(model, findings, Console())
    raise typer.Exit(checks.exit_code(findings, strict=strict))


@app.command()
def version() -> None:
    """Print mainsail's version."""
    typer.echo(__version__)


register(app)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
